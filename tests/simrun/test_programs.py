"""Unmodified C programs under `fastmap sim-run`: the fd table, fork, exec, sysfs, and the
errnos of calls the simulated files do not implement. Each program checks itself and
exits non-zero at the first wrong answer (tests/simrun/progs)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.simrun.conftest import PROGS, expect_ok, sim_run

pytestmark = pytest.mark.not_under_sanitizer(
    reason="sim-run's interposer and libfastmap_sim.so are not rebuilt with the sanitizer"
)

CASES = [
    ("fds", ()),  # no devices: /dev/vfio/* must be ENOENT
    ("fork", ()),
    ("fork_pins", ()),  # a child's files close before its parent's wait returns
    ("exec", ()),
    ("sysfs", ("--device", "edu")),
    ("fail_nth", ()),  # fault injection: fail-nth semantics and the debugfs knobs
    ("migration", ("--device", "edu")),  # VFIO migration data fds, HWPT dirty tracking
]


@pytest.mark.parametrize(("name", "options"), CASES, ids=[c[0] for c in CASES])
def test_program_under_sim_run(
    cc: Callable[..., Path], name: str, options: tuple[str, ...]
) -> None:
    exe = cc(PROGS / f"{name}.c")
    assert expect_ok(sim_run([str(exe)], *options)).strip() == f"{name} ok"


def test_bad_config_is_reported(cc: Callable[..., Path]) -> None:
    exe = cc(PROGS / "fds.c")
    result = sim_run([str(exe)], "--device", "edu,colour=blue")
    assert "bad FASTMAP_SIM_CONFIG" in result.stderr
    assert result.returncode != 0


def test_no_program() -> None:
    result = sim_run([])
    assert result.returncode != 0
    assert "no program given" in result.stderr


def test_trace_shows_dirty_tracking(cc: Callable[..., Path], tmp_path: Path) -> None:
    """`sim-run --trace` names the HWPT dirty-tracking calls and counts the dirty bits the
    bitmap came back with: migration.c checked that its bitmap has exactly page 3 set. It
    names the migration states asked for and shows VFIO_MIG_GET_PRECOPY_INFO's figures."""
    exe = cc(PROGS / "migration.c")
    log = tmp_path / "calls.log"
    expect_ok(sim_run([str(exe)], "--device", "edu", "--trace", str(log)))
    text = log.read_text()
    assert re.search(r"IOMMU_HWPT_SET_DIRTY_TRACKING hwpt=\d+ flags=0x1 = 0", text), text
    assert re.search(r"IOMMU_HWPT_GET_DIRTY_BITMAP hwpt=\d+ flags=0x0 iova=0x\w+ len=0x8000 "
                     r"-> dirty=1 = 0", text), text
    # The migration arcs by name, and the pre-copy figures migration.c checked.
    assert re.search(r"VFIO_DEVICE_FEATURE flags=0x20002 state=PRE_COPY -> data_fd=(\d+) = 0\n"
                     r".* ioctl fd=\1 VFIO_MIG_GET_PRECOPY_INFO -> initial_bytes=4168 "
                     r"dirty_bytes=0 = 0\n", text), text
    assert re.search(r"state=STOP_COPY -> data_fd=-1 = 0\n.* VFIO_MIG_GET_PRECOPY_INFO .* = "
                     r"-EINVAL", text), text
