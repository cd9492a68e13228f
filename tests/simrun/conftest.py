"""Shared pieces of the sim-run tests: compile a C program, run it under `fastmap sim-run`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROGS = Path(__file__).resolve().parent / "progs"


def kernel_headers() -> str | None:
    """Linux 6.12 uAPI headers: $FASTMAP_KERNEL_HEADERS, else tools/kernel-headers.sh's cache."""
    env = os.environ.get("FASTMAP_KERNEL_HEADERS")
    if env:
        return env
    found = subprocess.run(
        [str(ROOT / "tools" / "kernel-headers.sh")], capture_output=True, text=True
    )
    out = found.stdout.strip()
    if found.returncode == 0 and out:
        return out
    # Inside the VM the root filesystem is the host's, read-only, and HOME may differ: use
    # the host's cache of the script as it stands.
    for home in (Path.home(), Path("/root")):
        cached = sorted(home.glob(".cache/fastmap/linux-libc-dev-6.12*/usr/include"))
        if cached and (cached[-1] / "linux" / "iommufd.h").exists():
            return str(cached[-1])
    return None


@pytest.fixture(scope="session")
def cc(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """cc(source, *extra_flags) -> the compiled program (gcc, Linux 6.12 uAPI headers)."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    headers = kernel_headers()
    if headers is None:
        pytest.skip("no Linux uAPI headers (tools/kernel-headers.sh)")
    out_dir = tmp_path_factory.mktemp("simrun-progs")

    def build(source: Path, *flags: str) -> Path:
        exe = out_dir / source.stem
        subprocess.run(
            [
                "gcc",
                "-O1",
                "-Wall",
                "-Wextra",
                "-Werror",
                f"-I{headers}",
                "-o",
                str(exe),
                str(source),
                *flags,
            ],
            check=True,
        )
        return exe

    return build


def sim_run(
    argv: list[str], *options: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`fastmap sim-run [options] -- argv`, output captured."""
    cmd = [sys.executable, "-m", "fastmap.cli", "sim-run", *options, "--", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def expect_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout
