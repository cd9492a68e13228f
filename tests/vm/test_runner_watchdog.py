"""The VM runner's watchdog: a wedged guest is replaced by a fresh VM.

A real hang cannot be ordered up, so most of these tests hand tools/vmtest/run.sh a fake
QEMU (--qemu-prefix) that plays one kind of wedged guest on its serial console: one that
never starts the command, one whose kernel reports an RCU stall and goes quiet, one that
goes quiet after starting. The last test boots the real kernel twice: the first VM with its
CPUs stopped (QEMU's -S, added by a wrapper on its first call only), the second normally.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tools" / "vmtest" / "run.sh"
pytestmark = pytest.mark.vm

# Plays QEMU: writes its pid file, then acts out MODE on the console file QEMU would write.
FAKE_QEMU = r"""
import os, sys, time
mode, args = sys.argv[1], sys.argv[3:]   # argv[2] is the real QEMU's name
console = next(a.split("path=", 1)[1] for a in args if a.startswith("file,id=console,"))
pidfile = args[args.index("-pidfile") + 1]
with open(pidfile, "w") as f:
    f.write(str(os.getpid()))
def say(line):
    with open(console, "a") as f:
        f.write(line + "\n")
say("Linux version 6.12 (fake)")
if mode in ("stall", "silent"):
    say("VMTEST-START uptime=1.00")
if mode == "stall":
    say("rcu: INFO: rcu_preempt self-detected stall on CPU")
while True:
    time.sleep(1)
"""

# The first VM gets -S (CPUs never start); later ones boot normally.
STOP_FIRST = r"""#!/bin/bash
state=$1; shift
if [ ! -e "$state" ]; then touch "$state"; exec "$@" -S; fi
exec "$@"
"""


def _run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUNNER), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _fake_args(tmp_path: Path, mode: str) -> list[str]:
    fake = tmp_path / "fake_qemu.py"
    fake.write_text(FAKE_QEMU)
    kernel = tmp_path / "bzImage"  # never read by the fake
    kernel.write_bytes(b"")
    return [
        "--kernel", str(kernel), "--out", str(tmp_path / "out"),
        "--qemu-prefix", sys.executable, "--qemu-prefix", str(fake), "--qemu-prefix", mode,
    ]  # fmt: skip


def _attempts(tmp_path: Path) -> list[str]:
    return (tmp_path / "out" / "attempts").read_text().splitlines()


def test_guest_that_never_starts_the_command_is_replaced(tmp_path: Path) -> None:
    result = _run(
        [*_fake_args(tmp_path, "noboot"), "--boot-timeout", "2", "--attempts", "3",
         "--timeout", "100", "--", "true"]
    )  # fmt: skip
    assert result.returncode == 125, result.stderr
    lines = _attempts(tmp_path)
    assert len(lines) == 3, lines
    assert all("wedged" in line and "--boot-timeout" in line for line in lines), lines
    assert "attempt 1/3" in result.stderr and "starting a fresh VM" in result.stderr
    assert "attempt 3/3" in result.stderr and "giving up" in result.stderr
    # The replaced VMs' logs are kept beside the last one's.
    assert (tmp_path / "out" / "console.log.attempt1").is_file()
    assert (tmp_path / "out" / "console.log.attempt2").is_file()


def test_silence_after_a_reported_stall_is_a_wedge(tmp_path: Path) -> None:
    result = _run(
        [*_fake_args(tmp_path, "stall"), "--stall-timeout", "2", "--silence-timeout", "900",
         "--attempts", "1", "--timeout", "100", "--", "true"]
    )  # fmt: skip
    assert result.returncode == 125, result.stderr
    assert "RCU stall or soft lockup" in result.stderr
    (line,) = _attempts(tmp_path)
    assert "wedged" in line and "--stall-timeout" in line


def test_a_silent_guest_is_a_wedge(tmp_path: Path) -> None:
    result = _run(
        [*_fake_args(tmp_path, "silent"), "--stall-timeout", "1", "--silence-timeout", "3",
         "--attempts", "2", "--timeout", "100", "--", "true"]
    )  # fmt: skip
    assert result.returncode == 125, result.stderr
    lines = _attempts(tmp_path)
    assert len(lines) == 2 and all("--silence-timeout" in line for line in lines), lines


def test_attempts_share_the_overall_timeout(tmp_path: Path) -> None:
    result = _run(
        [*_fake_args(tmp_path, "noboot"), "--boot-timeout", "2", "--attempts", "10",
         "--timeout", "9", "--", "true"]
    )  # fmt: skip
    assert result.returncode == 125, result.stderr
    lines = _attempts(tmp_path)
    # Ten 2 s attempts do not fit in 9 s: the shared timeout stops them early. The last one
    # ends either by the overall timeout or, on a loaded machine where each fake boot takes
    # longer, as a wedge after which no time is left for another.
    assert 2 <= len(lines) < 10, lines
    assert all("wedged" in line for line in lines[:-1]), lines
    assert "timeout: the VM timed out after 9s" in lines[-1] or "wedged" in lines[-1], lines


def test_a_stopped_guest_is_replaced_by_one_that_runs_the_command(tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86_64")
    if subprocess.run([str(RUNNER.parent / "kernel.sh"), "--no-build"],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("needs a kernel (tools/vmtest/kernel.sh)")
    wrapper = tmp_path / "stop_first.sh"
    wrapper.write_text(STOP_FIRST)
    wrapper.chmod(0o755)
    result = _run(
        ["--out", str(tmp_path / "out"), "--no-bind-edu", "--boot-timeout", "40",
         "--qemu-prefix", str(wrapper), "--qemu-prefix", str(tmp_path / "first-call"),
         "--", "sh", "-c", "echo watchdog-ok; test -e /dev/iommu"],
        timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "watchdog-ok" in result.stdout
    lines = _attempts(tmp_path)
    # A loaded machine may need a third VM; the first one never ran.
    assert len(lines) >= 2, lines
    assert "wedged" in lines[0] and "--boot-timeout" in lines[0]
    assert lines[-1].startswith(f"attempt {len(lines)}: done")
