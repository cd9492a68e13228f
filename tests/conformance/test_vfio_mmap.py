"""VFIO region mmap (vfio_pci_core_mmap) and region info flags/capabilities with edu.

BAR0 (1 MiB, no MSI-X table) is mmappable with no capability chain; the config space and
ROM regions are not. The errnos of bad mappings are vfio-pci's. Through the mapping, loads
and stores are register accesses with their side effects: the liveness register inverts
what is written (also a write of the value it already holds), the factorial computes, the
raise register interrupts. On the simulator the mapping is trapped (single-stepped), on
the real kernel it is QEMU's edu BAR itself; the same assertions hold on both.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
from collections.abc import Iterator

import pytest

from fastmap import uapi
from fastmap.kernel import Fd, Kernel
from fastmap.lifecycle.device import RegionInfo
from fastmap.lifecycle.irq import DeviceIrq
from fastmap.lifecycle.pci_caps import CAP_ID_MSI, find_capability, msi_info, parse_capabilities
from fastmap.lifecycle.region_map import RegionMapping

from .helpers import bind_iommufd, raises_errno

pytestmark = pytest.mark.not_under_sanitizer(
    reason="the simulated BAR mapping single-steps through SIGSEGV/SIGTRAP handlers"
)

CONFIG = uapi.VFIO_PCI_CONFIG_REGION_INDEX
BAR0 = uapi.VFIO_PCI_BAR0_REGION_INDEX
RW = mmap.PROT_READ | mmap.PROT_WRITE
DEADLINE = 10.0


def _region(fd: Fd, index: int) -> RegionInfo:
    info = uapi.new(uapi.vfio_region_info, index=index)
    fd.ioctl(uapi.VFIO_DEVICE_GET_REGION_INFO, info)
    assert info.cap_offset == 0 or info.flags & uapi.VFIO_REGION_INFO_FLAG_CAPS
    return RegionInfo(index, int(info.flags), int(info.size), int(info.offset))


@pytest.fixture
def dev(kernel: Kernel, vfio_device: str, iommufd: Fd) -> Iterator[Fd]:
    """edu's cdev, bound, with memory decoding and bus mastering (for MSI) on."""
    with kernel.open_fd(vfio_device) as fd:
        bind_iommufd(fd, iommufd.number)
        cfg = _region(fd, CONFIG).offset
        command = int.from_bytes(fd.pread(2, cfg + 4), "little")
        fd.pwrite((command | 0x6).to_bytes(2, "little"), cfg + 4)
        # edu keeps its state across opens (no reset method): acknowledge whatever an
        # earlier user left pending (interrupt status 0x24, acknowledge 0x64).
        bar0 = _region(fd, BAR0).offset
        fd.pwrite((0xFFFFFFFF).to_bytes(4, "little"), bar0 + 0x64)
        assert int.from_bytes(fd.pread(4, bar0 + 0x24), "little") == 0
        yield fd


def test_region_info_flags(dev: Fd) -> None:
    rw = uapi.VFIO_REGION_INFO_FLAG_READ | uapi.VFIO_REGION_INFO_FLAG_WRITE
    bar0 = _region(dev, BAR0)
    # No MSI-X table in the BAR: mmappable, and no capability chain.
    assert (bar0.flags, bar0.size) == (rw | uapi.VFIO_REGION_INFO_FLAG_MMAP, 1 << 20)
    cfg = _region(dev, CONFIG)
    assert (cfg.flags, cfg.size) == (rw, 256)
    for index in range(1, 7):  # BAR1..5 and the ROM: absent
        assert (_region(dev, index).flags, _region(dev, index).size) == (0, 0)


def test_mmap_errnos(kernel: Kernel, dev: Fd) -> None:
    page = mmap.PAGESIZE
    bar0 = _region(dev, BAR0)
    bad = [
        (page, bar0.offset, mmap.MAP_PRIVATE),  # vfio wants a shared mapping
        ((1 << 20) + page, bar0.offset, mmap.MAP_SHARED),  # longer than the BAR
        (page, bar0.offset + (1 << 20), mmap.MAP_SHARED),  # starts at the BAR's end
        (page, bar0.offset + 8, mmap.MAP_SHARED),  # offset not page-aligned
        (page, _region(dev, CONFIG).offset, mmap.MAP_SHARED),  # config space: no mmap
        (page, uapi.VFIO_PCI_ROM_REGION_INDEX << 40, mmap.MAP_SHARED),
        (page, 1 << 40, mmap.MAP_SHARED),  # BAR1 is absent
        (page, 9 << 40, mmap.MAP_SHARED),  # past the regions
    ]
    for length, offset, flags in bad:
        with raises_errno(errno.EINVAL):
            kernel.mmap(dev.number, length, offset, RW, flags)


def test_registers_through_the_mapping(dev: Fd) -> None:
    with RegionMapping(dev, _region(dev, BAR0)) as bar:
        regs = bar.memoryview.cast("I")
        assert regs[0] == 0x010000ED  # identification
        regs[1] = 0x12345678  # liveness: reads back inverted
        assert regs[1] == 0xEDCBA987
        regs[1] = 0xEDCBA987  # the same value again is still a write
        assert regs[1] == 0x12345678
        assert bar.read32(4) == 0x12345678
        bar.write32(0x08, 5)  # factorial: synchronous on the simulator, polled on QEMU
        while bar.read32(0x20) & 0x1:
            pass
        assert bar.read32(0x08) == 120
        # The 64-bit DMA registers take 64-bit accesses.
        bar.write64(0x80, 0x1234_5678_9000)
        assert bar.read64(0x80) == 0x1234_5678_9000
        # The mapping and pread see the same device.
        assert dev.pread(4, 4) == (0x12345678).to_bytes(4, "little")
        dev.pwrite((0xFF).to_bytes(4, "little"), 4)
        assert regs[1] == 0xFFFFFF00
        del regs


def test_interrupt_raised_through_the_mapping(dev: Fd) -> None:
    with (
        DeviceIrq(dev, uapi.VFIO_PCI_MSI_IRQ_INDEX) as irq,
        RegionMapping(dev, _region(dev, BAR0), length=mmap.PAGESIZE) as bar,
    ):
        bar.write32(0x60, 0x4)
        assert irq.wait(DEADLINE) >= 1
        assert bar.read32(0x24) == 0x4
        bar.write32(0x64, 0x4)
        assert bar.read32(0x24) == 0


def test_partial_mapping_and_numpy(dev: Fd) -> None:
    np = pytest.importorskip("numpy")
    with RegionMapping(dev, _region(dev, BAR0), length=mmap.PAGESIZE) as bar:
        regs = bar.array(np.uint32)
        assert regs.shape == (mmap.PAGESIZE // 4,)
        assert int(regs[0]) == 0x010000ED
        regs[1] = 1
        assert int(regs[1]) == 0xFFFFFFFE
        del regs


def test_capabilities(dev: Fd) -> None:
    cfg = _region(dev, CONFIG)
    config = dev.pread(cfg.size, cfg.offset)
    caps = parse_capabilities(config)
    msi = find_capability(caps, CAP_ID_MSI)
    assert msi is not None and [c.id for c in caps] == [CAP_ID_MSI]
    info = msi_info(config, msi)
    assert (info.vectors, info.addr64) == (1, True)


def test_ctypes_view_sees_the_device(dev: Fd, kernel: Kernel) -> None:
    """A raw address from Kernel.mmap works like any pointer (what a C driver does)."""
    addr = kernel.mmap(dev.number, mmap.PAGESIZE, _region(dev, BAR0).offset, mmap.PROT_READ)
    try:
        assert ctypes.c_uint32.from_address(addr).value == 0x010000ED
    finally:
        kernel.munmap(addr, mmap.PAGESIZE)


_SIGBUS_CHILD = """
import mmap, sys
from fastmap import uapi
from fastmap.kernel import RealKernel
from fastmap.lifecycle.device import RegionInfo
from tests.conformance.test_vfio_mmap import _region
from tests.conformance.helpers import bind_iommufd
if sys.argv[1] == "sim":
    from fastmap.sim import SimKernel
    k = SimKernel()
    cdev = k.machine.add_pci_device()["cdev"]
else:
    k = RealKernel()
    cdev = sys.argv[2]
iommufd = k.open_fd("/dev/iommu")
dev = k.open_fd(cdev)
bind_iommufd(dev, iommufd.number)
bar0 = _region(dev, uapi.VFIO_PCI_BAR0_REGION_INDEX)
addr = k.mmap(dev.number, mmap.PAGESIZE, bar0.offset, mmap.PROT_READ)
import ctypes
assert ctypes.c_uint32.from_address(addr).value == 0x010000ED  # decoding is on after open
cfg = _region(dev, uapi.VFIO_PCI_CONFIG_REGION_INDEX).offset
command = int.from_bytes(dev.pread(2, cfg + 4), "little")
dev.pwrite((command & ~0x2).to_bytes(2, "little"), cfg + 4)
print("mapped", flush=True)
ctypes.c_uint32.from_address(addr).value
print("read without SIGBUS", flush=True)
"""


def test_access_with_memory_off_is_sigbus(kernel: Kernel, vfio_device: str) -> None:
    """vfio-pci's open turns memory decoding on (a mapped BAR reads); turned off, a mapped
    BAR access raises SIGBUS (vfio-pci's fault handler). In a child process, so the test
    survives it."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", _SIGBUS_CHILD, kernel.name, vfio_device],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=root,
    )
    assert result.stdout == "mapped\n", result.stderr
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stderr)
