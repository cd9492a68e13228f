"""The `fastmap` command's behaviour: --version, global options on either side of the
subcommand, one-line errors (a traceback only with -v), and refused nonsense."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fastmap.cli import main


def _fastmap(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastmap.cli", *argv], capture_output=True, text=True, timeout=300
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"fastmap {version('fastmap')}\n"


@pytest.mark.parametrize(
    "argv", [["--kernel", "sim", "doctor"], ["doctor", "--kernel", "sim"]], ids=["before", "after"]
)
def test_kernel_option_before_or_after_the_subcommand(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("fastmap doctor: the simulated kernel")


def test_the_option_after_the_subcommand_wins() -> None:
    assert main(["--kernel", "real", "doctor", "--kernel", "sim"]) == 0


def test_real_kernel_without_dev_iommu_says_so() -> None:
    if os.path.exists("/dev/iommu"):
        pytest.skip("this machine has /dev/iommu")
    run = _fastmap("--kernel", "real", "demo")
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.startswith(
        "fastmap demo: IommufdUnavailableError: open(/dev/iommu) failed: ENOENT"
    )
    assert "modprobe iommufd" in run.stderr and "edu" not in run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    verbose = _fastmap("demo", "--kernel", "real", "-v")
    assert verbose.returncode == 1
    assert "Traceback (most recent call last)" in verbose.stderr
    assert verbose.stderr.rstrip().endswith("FASTMAP_KERNEL=sim")


def test_bugs_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only expected failures (fastmap's errors, OSError, ValueError) become one line."""
    import fastmap._tools.host_commands as commands

    def broken(*_: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(commands, "describe_sim", broken)
    with pytest.raises(KeyError):
        main(["doctor", "--kernel", "sim"])


@pytest.mark.parametrize("rate", ["0", "-5", "nan", "fast"])
def test_migrate_demo_rate_must_be_positive(rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["migrate-demo", "--rate", rate])
    assert exit_.value.code == 2
    assert "argument --rate:" in capsys.readouterr().err
