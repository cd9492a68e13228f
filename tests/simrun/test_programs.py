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


@pytest.mark.parametrize("name", ["fds", "fork", "exec"])
def test_program_under_trace(cc: Callable[..., Path], tmp_path: Path, name: str) -> None:
    """Tracing takes no fd the program expects: the lowest free number is still the next
    one, and close/close_range over every fd leave the trace file open and writing."""
    exe = cc(PROGS / f"{name}.c")
    log = tmp_path / "trace.log"
    assert expect_ok(sim_run([str(exe)], "--trace", str(log))).strip() == f"{name} ok"
    assert "open /dev/iommu" in log.read_text()


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
    assert re.search(
        r"IOMMU_HWPT_GET_DIRTY_BITMAP hwpt=\d+ flags=0x0 iova=0x\w+ len=0x8000 "
        r"-> dirty=1 = 0",
        text,
    ), text
    # The migration arcs by name, and the pre-copy figures migration.c checked.
    assert re.search(
        r"VFIO_DEVICE_FEATURE flags=0x20002 state=PRE_COPY -> data_fd=(\d+) = 0\n"
        r".* ioctl fd=\1 VFIO_MIG_GET_PRECOPY_INFO -> initial_bytes=4168 "
        r"dirty_bytes=0 = 0\n",
        text,
    ), text
    assert re.search(
        r"state=STOP_COPY -> data_fd=-1 = 0\n.* VFIO_MIG_GET_PRECOPY_INFO .* = "
        r"-EINVAL",
        text,
    ), text


#: What the trace shows of each ioctl trace_ioctls.c makes (fd and result left out): input
#: fields always; after "->", out fields only when the call succeeded (0 when it failed:
#: GET_HW_INFO, HWPT_ALLOC, BIND) and in/out fields as they stand (IOVA_RANGES, MAP, ATTACH).
TRACED_IOCTLS = [
    r"IOMMU_IOAS_ALLOC -> ioas=\d+",
    r"IOMMU_IOAS_IOVA_RANGES ioas=71 -> num_iovas=0",
    r"IOMMU_IOAS_MAP ioas=72 flags=0x1 va=0x7000 len=0x3000 -> iova=0x9000",
    r"IOMMU_IOAS_UNMAP ioas=73 iova=0x5000 len=0x3000",
    r"IOMMU_DESTROY id=99",
    r"IOMMU_GET_HW_INFO dev=74 -> type=0 caps=0x0",
    r"IOMMU_HWPT_ALLOC flags=0x3 dev=75 pt=76 data_type=1 -> hwpt=0",
    r"IOMMU_HWPT_SET_DIRTY_TRACKING hwpt=77 flags=0x1",
    r"IOMMU_HWPT_GET_DIRTY_BITMAP hwpt=78 flags=0x1 iova=0x1000 len=0x10000 -> dirty=0",
    r"VFIO_CHECK_EXTENSION arg=3",
    r"VFIO_GROUP_SET_CONTAINER container=\d+",
    r"VFIO_SET_IOMMU arg=3",
    r'VFIO_GROUP_GET_DEVICE_FD "0000:00:03.0"',
    r"VFIO_IOMMU_MAP_DMA flags=0x3 va=0x7000 iova=0x9000 size=0x2000",
    r"VFIO_IOMMU_UNMAP_DMA flags=0x0 iova=0xa000 size=0x\w+",
    r"VFIO_IOMMU_DIRTY_PAGES flags=0x10000",  # the container's: same number as DEVICE_FEATURE
    r"VFIO_DEVICE_FEATURE flags=0x10000",
    r"VFIO_DEVICE_SET_IRQS flags=0x21 index=1 start=2 count=0",
    r"VFIO_DEVICE_BIND_IOMMUFD iommufd=\d+ -> devid=0",  # the group already opened it: EBUSY
    r"VFIO_DEVICE_ATTACH_IOMMUFD_PT -> pt_id=79",
    r"VFIO_DEVICE_GET_REGION_INFO index=0 -> flags=0x7 size=0x100000",  # edu's BAR0: 1 MiB
    r"VFIO_DEVICE_GET_IRQ_INFO index=1 -> flags=0x\w+ count=1",
    r"0x3b7f",  # not a request the trace knows
]


def test_trace_decodes_each_ioctl(cc: Callable[..., Path], tmp_path: Path) -> None:
    """`sim-run --trace` names every ioctl it knows and shows its fields (the decoder table in
    csrc/preload/trace_ioctls.cc)."""
    exe = cc(PROGS / "trace_ioctls.c")
    log = tmp_path / "calls.log"
    expect_ok(sim_run([str(exe)], "--device", "edu,group=1", "--trace", str(log)))
    shown = [
        re.sub(r"^\s*\d+ ioctl fd=\d+ (.*?) = \S+$", r"\1", line)
        for line in log.read_text().splitlines()
        if " ioctl " in line
    ]
    assert len(shown) == len(TRACED_IOCTLS), shown
    for line, pattern in zip(shown, TRACED_IOCTLS, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
