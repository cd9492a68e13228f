"""examples/migration_loop.py: the pre-copy loop written out, on the simulated kernel. The
copy must be exact; a loop that skips a send must be caught by its final check."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.script_module import load_script

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "migration_loop.py"
ARGS = ["--ram-mib", "4", "--rate", "20000", "--bandwidth", "64", "--max-rounds", "4"]


def _load() -> ModuleType:
    return load_script(EXAMPLE, "fastmap_example_migration_loop")


def test_the_loop_copies_guest_ram_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load().main(ARGS) == 0
    out = capsys.readouterr().out
    assert "round 1:" in out and out.rstrip().endswith("RESULT migration_loop OK")


def test_a_skipped_send_is_caught(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = _load()
    real_send = module.send

    def send_all_but_page_0(dest, src, pages, mib_s):  # type: ignore[no-untyped-def]
        real_send(dest, src, pages[pages != 0], mib_s)

    monkeypatch.setattr(module, "send", send_all_but_page_0)
    assert module.main(ARGS) == 1
    assert "FAIL" in capsys.readouterr().out


def test_script_runs(tmp_path: Path) -> None:
    import subprocess

    run = subprocess.run(
        [sys.executable, str(EXAMPLE), *ARGS], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
