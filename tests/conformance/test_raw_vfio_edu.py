"""The simulated edu PCI device behind vfio-pci: config space, regions, registers, DMA.

The register semantics follow QEMU's hw/misc/edu.c (docs/specs/edu.rst); the DMA round
trips mirror the vmtest walk (example-raw-uapi-test.py parts C and D).
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from tests.facilities import only_on_sim

from .raw import (
    BAR0_OFF,
    CFG_OFF,
    EDU_ALIVE,
    EDU_CMD_RUN,
    EDU_DMA_BUF,
    EDU_DMA_CMD,
    EDU_DMA_CNT,
    EDU_DMA_DST,
    EDU_DMA_SRC,
    EDU_FACT,
    EDU_ID,
    EDU_IRQ_ACK,
    EDU_IRQ_RAISE,
    EDU_IRQ_STATUS,
    EDU_STATUS,
    PAGE,
    Buf,
    Dev,
    IoasFd,
    K,
    Type1,
    attach,
    bind,
    close,
    make,
    sim_kernel,
)

SRC_IOVA, DST_IOVA, BAD_IOVA = 0x100000, 0x200000, 0x300000
PCI_STATUS_INTERRUPT = 0x08  # INTx asserted


class Rig:
    """A kernel with one edu device, opened through a Type1 container (enabled)."""

    def __init__(self, k: Any, info: dict[str, Any], enable: bool = True) -> None:
        self.k, self.info = k, info
        self.t1 = Type1(self.k, self.info["group"])
        fd = self.t1.device(self.info["bdf"])
        assert fd >= 0, fd
        self.dev = Dev(self.k, fd)
        if enable:
            self.dev.enable()

    def faults(self, clear: bool = True) -> list[dict[str, Any]]:
        return list(self.k.machine.dma_faults(self.info["bdf"], clear))


@pytest.fixture()
def rig(core: Any, pci: dict[str, Any]) -> Rig:
    return Rig(core, pci)


@pytest.fixture()
def bufs() -> Iterator[tuple[Buf, Buf]]:
    src, dst = Buf(PAGE), Buf(PAGE)
    yield src, dst
    src.free()
    dst.free()


# -- vfio-pci view ------------------------------------------------------------------------
def test_device_info_and_regions(rig: Rig) -> None:
    rc, info = rig.dev.info()
    assert rc == 0
    assert info.flags == K["VFIO_DEVICE_FLAGS_PCI"]  # edu has no reset method
    assert (info.num_regions, info.num_irqs) == (9, 5)
    rc, bar0 = rig.dev.region(0)
    assert rc == 0
    assert (bar0.offset, bar0.size) == (0, 1 << 20)
    assert bar0.flags == (
        K["VFIO_REGION_INFO_FLAG_READ"]
        | K["VFIO_REGION_INFO_FLAG_WRITE"]
        | K["VFIO_REGION_INFO_FLAG_MMAP"]  # no MSI-X table: no capability either
    )
    assert bar0.cap_offset == 0
    rc, cfg = rig.dev.region(7)
    assert (rc, cfg.offset, cfg.size) == (0, 7 << 40, 256)
    for idx in (1, 5, 6):  # BAR1-5 and the ROM are absent
        rc, r = rig.dev.region(idx)
        assert (rc, r.size, r.flags, r.offset) == (0, 0, 0, idx << 40)
    for idx in (8, 9, 100):  # no VGA, no device-specific regions
        assert rig.dev.region(idx)[0] == -errno.EINVAL
    short = make("vfio_region_info", argsz=31)
    assert rig.dev.ioctl("VFIO_DEVICE_GET_REGION_INFO", short) == -errno.EINVAL
    short_info = make("vfio_device_info", argsz=15)
    assert rig.dev.ioctl("VFIO_DEVICE_GET_INFO", short_info) == -errno.EINVAL


def test_irq_info(rig: Rig) -> None:
    def irq(index: int) -> tuple[int, Any]:
        s = make("vfio_irq_info", index=index)
        return rig.dev.ioctl("VFIO_DEVICE_GET_IRQ_INFO", s), s

    rc, intx = irq(K["VFIO_PCI_INTX_IRQ_INDEX"])
    assert (rc, intx.count) == (0, 1)
    assert intx.flags & K["VFIO_IRQ_INFO_MASKABLE"]
    assert irq(K["VFIO_PCI_MSI_IRQ_INDEX"])[1].count == 1
    assert irq(K["VFIO_PCI_MSIX_IRQ_INDEX"])[1].count == 0
    assert irq(K["VFIO_PCI_ERR_IRQ_INDEX"])[0] == -errno.EINVAL  # conventional PCI
    assert irq(5)[0] == -errno.EINVAL


def test_unknown_ioctl_and_features(rig: Rig) -> None:
    # An ioctl vfio-pci does not know (0x3B00 | 0x7F).
    assert rig.dev.ioctl(0x3B7F, make("vfio_device_info")) == -errno.ENOTTY
    # DMA_LOGGING_START (6): vfio-pci has no device DMA logging ops for edu (migration
    # features: test_sim_vfio_migration.py).
    probe = make(
        "vfio_device_feature",
        flags=K["VFIO_DEVICE_FEATURE_PROBE"] | K["VFIO_DEVICE_FEATURE_SET"] | 6,
    )
    assert rig.dev.ioctl("VFIO_DEVICE_FEATURE", probe) == -errno.ENOTTY
    both = make(
        "vfio_device_feature", flags=K["VFIO_DEVICE_FEATURE_GET"] | K["VFIO_DEVICE_FEATURE_SET"] | 1
    )
    assert rig.dev.ioctl("VFIO_DEVICE_FEATURE", both) == -errno.EINVAL
    assert (
        rig.dev.ioctl("VFIO_DEVICE_FEATURE", make("vfio_device_feature", argsz=4)) == -errno.EINVAL
    )


@only_on_sim  # reads the command register through the simulated machine
def test_config_space(core: Any, pci: dict[str, Any]) -> None:
    r = Rig(core, pci, enable=False)
    d = r.dev
    assert d.cfg_read(0, 2) == 0x1234 and d.cfg_read(2, 2) == 0x11E8
    assert d.cfg_read(0, 4) == 0x11E81234
    assert d.cfg_read(8, 4) >> 8 == 0x00FF00 and d.cfg_read(8, 1) == 0x10  # class, revision
    # vfio-pci's open enables the function: memory decoding on, bus mastering off.
    assert d.cfg_read(4, 2) == 0x0002
    assert d.cfg_read(6, 2) & 0x10  # capability list
    cap = d.cfg_read(0x34, 1)
    assert d.cfg_read(cap, 1) == 0x05  # MSI
    # BAR sizing: all-ones reads back the size mask.
    orig = d.cfg_read(0x10, 4)
    assert d.cfg_write(0x10, 0xFFFFFFFF, 4) == 4
    assert d.cfg_read(0x10, 4) == 0xFFF00000
    assert d.cfg_write(0x10, orig, 4) == 4 and d.cfg_read(0x10, 4) == orig
    assert d.cfg_write(0, 0xFFFF, 2) == 2 and d.cfg_read(0, 2) == 0x1234  # read-only
    assert d.cfg_write(4, 0xFFFF, 2) == 2 and d.cfg_read(4, 2) == 0x0547  # writable bits
    assert r.k.machine.pci_command(r.info["bdf"]) == 0x0547
    assert r.k.pread(d.fd, 4, CFG_OFF + 254) == -errno.EFAULT  # past the end
    assert r.k.pread(d.fd, 2, CFG_OFF + 254) == struct.pack("<H", 0)


def test_bar_needs_memory_decoding(core: Any, pci: dict[str, Any]) -> None:
    r = Rig(core, pci, enable=False)
    assert r.dev.r32(EDU_ID) == 0x010000ED  # vfio-pci enabled memory decoding at open
    assert r.dev.cfg_write(4, 0, 2) == 2
    assert r.k.pread(r.dev.fd, 4, BAR0_OFF) == -errno.EIO
    assert r.k.pwrite(r.dev.fd, b"\0" * 4, BAR0_OFF + EDU_ALIVE) == -errno.EIO
    r.dev.enable(memory=True, master=False)
    assert r.dev.r32(EDU_ID) == 0x010000ED


def test_bar_access_bounds(rig: Rig) -> None:
    k, fd = rig.k, rig.dev.fd
    assert k.pread(fd, 4, BAR0_OFF + (1 << 20)) == -errno.EINVAL
    assert k.pread(fd, 16, BAR0_OFF + (1 << 20) - 8) == b"\xff" * 8  # cut at the BAR end
    assert k.pread(fd, 4, 1 << 40) == -errno.EINVAL  # BAR1 does not exist
    assert k.pread(fd, 4, 8 << 40) == -errno.EINVAL  # no VGA region


# -- edu registers ------------------------------------------------------------------------
def test_ident_and_liveness(rig: Rig) -> None:
    d = rig.dev
    assert d.r32(EDU_ID) == 0x010000ED
    for v in (0, 0x12345678, 0xFFFFFFFF):
        d.w32(EDU_ALIVE, v)
        assert d.r32(EDU_ALIVE) == ~v & 0xFFFFFFFF


def test_access_sizes(rig: Rig) -> None:
    k, fd = rig.k, rig.dev.fd
    # Registers below 0x80 take 32-bit accesses only; anything else reads as all-ones.
    assert k.pread(fd, 8, BAR0_OFF + EDU_ID) == b"\xff" * 8
    assert k.pread(fd, 2, BAR0_OFF + EDU_ID) == b"\0\0"  # below 4 bytes QEMU reads 0
    rig.dev.w32(EDU_ALIVE, 0)
    assert k.pwrite(fd, struct.pack("<Q", 5 << 32), BAR0_OFF + EDU_ID) == 8  # ignored
    assert rig.dev.r32(EDU_ALIVE) == 0xFFFFFFFF
    # vfio-pci splits an unaligned 8-byte pwrite into two 4-byte accesses.
    assert k.pwrite(fd, struct.pack("<II", 5, 3), BAR0_OFF + EDU_ALIVE) == 8
    assert rig.dev.r32(EDU_ALIVE) == ~5 & 0xFFFFFFFF and rig.dev.factorial() == 6
    # The DMA block takes 32- and 64-bit accesses; a 32-bit write sets the whole register.
    rig.dev.w64(EDU_DMA_SRC, 0x1122334455667788)
    assert rig.dev.r64(EDU_DMA_SRC) == 0x1122334455667788
    assert rig.dev.r32(EDU_DMA_SRC) == 0x55667788
    rig.dev.w32(EDU_DMA_SRC, 0xAABBCCDD)
    assert rig.dev.r64(EDU_DMA_SRC) == 0xAABBCCDD
    assert k.pread(fd, 4, BAR0_OFF + 0x84) == b"\xff" * 4  # no register there


def _factorial32(n: int) -> int:
    out = 1
    for i in range(1, n + 1):
        out = out * i % (1 << 32)
    return out


@only_on_sim  # reads edu's buffer through the simulated machine
def test_factorial_and_interrupts(rig: Rig) -> None:
    d = rig.dev
    for n in (0, 1, 5, 12, 13, 20):
        d.w32(EDU_FACT, n)
        assert d.r32(EDU_STATUS) & 1 == 0  # completes synchronously
        assert d.r32(EDU_FACT) == _factorial32(n)
    assert d.r32(EDU_IRQ_STATUS) == 0
    d.w32(EDU_STATUS, 0x80)  # raise an interrupt when a factorial is done
    assert d.r32(EDU_STATUS) == 0x80
    d.w32(EDU_FACT, 4)
    assert d.r32(EDU_IRQ_STATUS) == 0x1
    d.w32(EDU_IRQ_RAISE, 0x30)
    assert d.r32(EDU_IRQ_STATUS) == 0x31
    d.w32(EDU_IRQ_ACK, 0x11)
    assert d.r32(EDU_IRQ_STATUS) == 0x20
    d.w32(EDU_STATUS, 0)
    assert d.r32(EDU_STATUS) == 0


# -- DMA ----------------------------------------------------------------------------------
def roundtrip(dev: Dev, k: Any, bdf: str, src: Buf, dst: Buf) -> None:
    pattern = os.urandom(PAGE)
    src.write(pattern)
    dst.write(b"\0" * PAGE)
    assert dev.dma(SRC_IOVA, EDU_DMA_BUF, PAGE, to_ram=False) & EDU_CMD_RUN == 0
    assert k.machine.edu_buffer(bdf) == pattern
    assert dev.dma(EDU_DMA_BUF, DST_IOVA, PAGE, to_ram=True) & EDU_CMD_RUN == 0
    assert dst.read(PAGE) == pattern


@only_on_sim  # reads the simulated machine's DMA fault log
def test_dma_roundtrip_type1(rig: Rig, bufs: tuple[Buf, Buf]) -> None:
    src, dst = bufs
    assert rig.t1.map(src.addr, SRC_IOVA, PAGE) == 0
    assert rig.t1.map(dst.addr, DST_IOVA, PAGE) == 0
    roundtrip(rig.dev, rig.k, rig.info["bdf"], src, dst)
    assert rig.faults() == []
    # DMA after unmap is blocked and leaves memory alone.
    assert rig.t1.unmap(DST_IOVA, PAGE) == (0, PAGE)
    dst.write(b"\xaa" * PAGE)
    rig.dev.dma(EDU_DMA_BUF, DST_IOVA, PAGE, to_ram=True)
    assert dst.read(PAGE) == b"\xaa" * PAGE
    assert rig.faults() == [{"addr": DST_IOVA, "len": PAGE, "write": True, "error": -errno.EFAULT}]


def test_dma_roundtrip_iommufd(bufs: tuple[Buf, Buf]) -> None:
    k = sim_kernel()
    info = k.machine.add_pci_device()
    dev = Dev(k, k.open(info["cdev"], os.O_RDWR))
    ifd = IoasFd(k)
    rc, devid = bind(dev, ifd.fd)
    assert rc == 0 and devid > 0
    rc, hwpt = attach(dev, ifd.ioas_id)
    assert rc == 0 and hwpt not in (0, ifd.ioas_id, devid)  # the auto HWPT's id comes back
    rc, ranges, align = ifd.iova_ranges(ifd.ioas_id)
    assert rc == 0
    assert ranges == [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]
    assert align == 0x1000
    dev.enable()
    src, dst = bufs
    assert ifd.map_fixed(src.addr, PAGE, SRC_IOVA) == 0
    assert ifd.map_fixed(dst.addr, PAGE, DST_IOVA) == 0
    roundtrip(dev, k, info["bdf"], src, dst)
    # A DMA to an IOVA that is not mapped lands nowhere and is logged as a fault.
    dst.write(b"\x11" * PAGE)
    assert dev.dma(EDU_DMA_BUF, BAD_IOVA, PAGE, to_ram=True) & EDU_CMD_RUN == 0
    assert dst.read(PAGE) == b"\x11" * PAGE and src.read(PAGE) != b"\x11" * PAGE
    assert k.machine.dma_faults(info["bdf"], True) == [
        {"addr": BAD_IOVA, "len": PAGE, "write": True, "error": -errno.EFAULT}
    ]
    # After IOAS_UNMAP the device can no longer write the buffer.
    assert ifd.unmap_range(DST_IOVA, PAGE) == 0
    dev.dma(EDU_DMA_BUF, DST_IOVA, PAGE, to_ram=True)
    assert dst.read(PAGE) == b"\x11" * PAGE
    assert [-f["error"] for f in k.machine.dma_faults(info["bdf"])] == [errno.EFAULT]


@only_on_sim  # reads the simulated machine's DMA fault log
def test_dma_needs_bus_master(core: Any, pci: dict[str, Any], bufs: tuple[Buf, Buf]) -> None:
    r = Rig(core, pci, enable=False)
    r.dev.enable(memory=True, master=False)
    _src, dst = bufs
    assert r.t1.map(dst.addr, DST_IOVA, PAGE) == 0
    dst.write(b"\x77" * PAGE)
    assert r.dev.dma(EDU_DMA_BUF, DST_IOVA, PAGE, to_ram=True) & EDU_CMD_RUN == 0
    assert dst.read(PAGE) == b"\x77" * PAGE
    assert r.faults() == [{"addr": DST_IOVA, "len": PAGE, "write": True, "error": -errno.EIO}]
    r.dev.enable()
    r.dev.dma(EDU_DMA_BUF, DST_IOVA, PAGE, to_ram=True)
    assert dst.read(PAGE) == bytes(PAGE)  # the device buffer starts zeroed


@only_on_sim  # reads the simulated machine's DMA fault log
def test_dma_address_is_cut_to_28_bits(rig: Rig, bufs: tuple[Buf, Buf]) -> None:
    src, dst = bufs
    assert rig.t1.map(dst.addr, DST_IOVA, PAGE) == 0
    dst.write(b"\0" * PAGE)
    rig.dev.w32(EDU_ALIVE, 0)
    src_pattern = os.urandom(64)
    assert rig.t1.map(src.addr, SRC_IOVA, PAGE) == 0
    src.write(src_pattern)
    rig.dev.dma(SRC_IOVA, EDU_DMA_BUF, 64, to_ram=False)
    rig.dev.dma(EDU_DMA_BUF, DST_IOVA | (1 << 28) | (1 << 40), 64, to_ram=True)
    assert dst.read(64) == src_pattern
    assert rig.faults() == []


@only_on_sim  # reads the simulated machine's DMA fault log
def test_dma_outside_device_buffer_is_refused(rig: Rig, bufs: tuple[Buf, Buf]) -> None:
    _src, dst = bufs
    assert rig.t1.map(dst.addr, DST_IOVA, PAGE) == 0
    dst.write(b"\x33" * PAGE)
    assert rig.dev.dma(EDU_DMA_BUF + 8, DST_IOVA, PAGE, to_ram=True) & EDU_CMD_RUN == 0
    assert dst.read(PAGE) == b"\x33" * PAGE
    assert rig.faults() == [
        {"addr": EDU_DMA_BUF + 8, "len": PAGE, "write": True, "error": -errno.ERANGE}
    ]


def test_dma_completion_interrupt(rig: Rig, bufs: tuple[Buf, Buf]) -> None:
    src, _dst = bufs
    assert rig.t1.map(src.addr, SRC_IOVA, PAGE) == 0
    rig.dev.dma(SRC_IOVA, EDU_DMA_BUF, 16, to_ram=False, irq=True)
    assert rig.dev.r32(EDU_IRQ_STATUS) == 0x100
    assert rig.dev.r64(EDU_DMA_CNT) == 16 and rig.dev.r64(EDU_DMA_DST) == EDU_DMA_BUF
    assert rig.dev.r64(EDU_DMA_CMD) == 4  # RUN cleared, the IRQ bit stays


@only_on_sim  # reads edu's buffer through the simulated machine
def test_dma_read_from_unmapped_iova_zero_fills(rig: Rig, bufs: tuple[Buf, Buf]) -> None:
    src, _dst = bufs
    assert rig.t1.map(src.addr, SRC_IOVA, PAGE) == 0
    src.write(b"\x99" * PAGE)
    rig.dev.dma(SRC_IOVA, EDU_DMA_BUF, PAGE, to_ram=False)
    rig.dev.dma(BAD_IOVA, EDU_DMA_BUF, 32, to_ram=False)
    buf = rig.k.machine.edu_buffer(rig.info["bdf"])
    assert buf[:32] == bytes(32) and buf[32:] == b"\x99" * (PAGE - 32)
    assert rig.faults() == [{"addr": BAD_IOVA, "len": 32, "write": False, "error": -errno.EFAULT}]


def test_edu_state_survives_close_and_reopen(
    core: Any, pci: dict[str, Any], bufs: tuple[Buf, Buf]
) -> None:
    """edu has no reset method, so vfio-pci resets it neither at the first open nor at the
    last close: the next user finds its registers, its DMA buffer and a pending INTx (the
    status register's interrupt bit) as the last one left them. The device is left as a
    fresh one reads: nothing pending, liveness 0, DMA registers 0."""
    src, dst = bufs
    pattern = os.urandom(PAGE)
    src.write(pattern)
    dst.write(bytes(PAGE))
    first = Rig(core, pci)
    first.dev.w32(EDU_IRQ_ACK, 0xFFFFFFFF)  # whatever an earlier test left pending
    assert first.t1.map(src.addr, SRC_IOVA, PAGE) == 0
    first.dev.dma(SRC_IOVA, EDU_DMA_BUF, PAGE, to_ram=False)
    first.dev.w32(EDU_ALIVE, 0x1234)
    first.dev.w32(EDU_IRQ_RAISE, 0x40)  # MSI is off: edu asserts INTx
    assert first.dev.cfg_read(6, 2) & PCI_STATUS_INTERRUPT
    for fd in (first.dev.fd, first.t1.gfd, first.t1.cfd):  # the last close of everything
        assert close(core, fd) == 0
    again = Rig(core, pci)
    try:
        assert again.dev.r32(EDU_ALIVE) == ~0x1234 & 0xFFFFFFFF
        assert again.dev.r32(EDU_IRQ_STATUS) == 0x40
        assert again.dev.cfg_read(6, 2) & PCI_STATUS_INTERRUPT
        assert (again.dev.r64(EDU_DMA_SRC), again.dev.r64(EDU_DMA_DST)) == (SRC_IOVA, EDU_DMA_BUF)
        assert again.dev.r64(EDU_DMA_CNT) == PAGE
        assert again.t1.map(dst.addr, DST_IOVA, PAGE) == 0
        again.dev.dma(EDU_DMA_BUF, DST_IOVA, PAGE, to_ram=True)
        assert dst.read(PAGE) == pattern
    finally:
        again.dev.w32(EDU_IRQ_ACK, 0xFFFFFFFF)
        again.dev.w32(EDU_ALIVE, 0xFFFFFFFF)
        for reg in (EDU_DMA_SRC, EDU_DMA_DST, EDU_DMA_CNT):
            again.dev.w64(reg, 0)
    assert not again.dev.cfg_read(6, 2) & PCI_STATUS_INTERRUPT


@only_on_sim  # reads the command register through the simulated machine
def test_reset_keeps_config(rig: Rig) -> None:
    before = rig.dev.cfg_read(4, 2)
    assert rig.dev.ioctl("VFIO_DEVICE_RESET", None) == -errno.EINVAL  # no reset method
    assert rig.dev.cfg_read(4, 2) == before
    # Closing the device (last close) disables the function; a new open enables it again,
    # with memory decoding on (pci_enable_device) and bus mastering off.
    bdf = rig.info["bdf"]
    assert rig.dev.close() == 0
    assert rig.k.machine.pci_command(bdf) == 0
    fd = rig.t1.device(bdf)
    assert fd >= 0
    assert Dev(rig.k, fd).cfg_read(4, 2) == 0x0002
