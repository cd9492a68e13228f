"""The README's sim-run quick start works as written: its first command block, run by bash
in a scratch directory that sees the repository's examples, tools and .venv, prints what
the README shows."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.simrun.conftest import ROOT, kernel_headers

pytestmark = pytest.mark.not_under_sanitizer(
    reason="sim-run's interposer and libfastmap_sim.so are not rebuilt with the sanitizer"
)

SECTION = ROOT.joinpath("README.md").read_text().split("## Running your own program", 1)[1]
BLOCK = re.search(r"^```\n(.*?)^```", SECTION, flags=re.M | re.S)


def test_readme_sim_run_quick_start(tmp_path: Path) -> None:
    if shutil.which("gcc") is None or kernel_headers() is None:
        pytest.skip("needs gcc and the Linux uAPI headers")
    assert BLOCK is not None
    lines = BLOCK.group(1).splitlines()
    build, run, shown = lines[0], lines[1], lines[2]
    assert shown.startswith("# ok: ")
    for name in ("examples", "tools"):
        (tmp_path / name).symlink_to(ROOT / name)
    # The README says .venv/bin/fastmap: give it this interpreter's installation.
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "fastmap").write_text(f'#!/bin/sh\nexec {sys.executable} -m fastmap.cli "$@"\n')
    (venv_bin / "fastmap").chmod(0o755)
    out = subprocess.run(
        ["bash", "-euc", f"{build}\n{run}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == shown.removeprefix("# ")
