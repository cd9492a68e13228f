"""A pinned page stays the page the device reaches, whatever the process does to its VA.

The sequence, on both kernels: map a page into an IOAS with an edu device attached (the
map pins it), then change what the process has at that VA (munmap and a new mmap there,
madvise(MADV_DONTNEED), fork and a write by the child), then have the device DMA into the
IOVA. Linux keeps writing the page it pinned: a new mapping at the VA is untouched, and
reading the IOVA back through the device gives what the device wrote. The simulator holds
shared memory by a mapping of its own and has the host kernel pin private memory
(sim/core/page_hold.h, sim/core/kernel_pin.h), so both kernels pass the same cases.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fastmap import uapi
from fastmap._libc import libc
from fastmap.kernel import Fd, Kernel

from .helpers import attach_pt, bind_iommufd, ioas_alloc, ioas_map, ioas_unmap

PAGE = mmap.PAGESIZE
# edu (QEMU's educational device): a 28-bit DMA engine between RAM and its 4 KiB buffer.
REG_DMA_SRC, REG_DMA_DST, REG_DMA_COUNT, REG_DMA_CMD = 0x80, 0x88, 0x90, 0x98
CMD_RUN, CMD_TO_RAM = 0x1, 0x2
EDU_BUFFER = 0x40000
PCI_COMMAND, PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER = 0x04, 1 << 1, 1 << 2
VICTIM_IOVA, SRC_IOVA, CHECK_IOVA = 0x100000, 0x200000, 0x300000

MAP_FIXED = 0x10
MAP_FAILED = ctypes.c_void_p(-1).value


def sys_mmap(addr: int | None, flags: int, fd: int = -1) -> int:
    va = libc.mmap(addr, PAGE, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, 0)
    if va in (None, MAP_FAILED):
        raise OSError(ctypes.get_errno(), "mmap")
    return int(va)


def read(va: int) -> bytes:
    return ctypes.string_at(va, PAGE)


def fill(va: int, data: bytes) -> None:
    ctypes.memmove(va, data, PAGE)


@dataclass
class Edu:
    """An edu cdev bound to an iommufd and attached to an IOAS, bus mastering on."""

    dev: Fd
    bar0: int

    def dma(self, src: int, dst: int, to_ram: bool) -> None:
        for reg, value in ((REG_DMA_SRC, src), (REG_DMA_DST, dst), (REG_DMA_COUNT, PAGE)):
            self.dev.pwrite(struct.pack("<Q", value), self.bar0 + reg)
        cmd = CMD_RUN | (CMD_TO_RAM if to_ram else 0)
        self.dev.pwrite(struct.pack("<Q", cmd), self.bar0 + REG_DMA_CMD)
        # A hang guard only: QEMU's edu finishes a DMA from a timer, the simulator at once.
        deadline = time.monotonic() + 30
        while struct.unpack("<Q", self.dev.pread(8, self.bar0 + REG_DMA_CMD))[0] & CMD_RUN:
            assert time.monotonic() < deadline, "edu DMA never completed"
            time.sleep(0.001)


def region_offset(dev: Fd, index: int) -> int:
    info = uapi.new(uapi.vfio_region_info, index=index)
    dev.ioctl(uapi.VFIO_DEVICE_GET_REGION_INFO, info)
    return int(info.offset)


@pytest.fixture
def edu(kernel: Kernel, iommufd: Fd, vfio_device: str) -> Iterator[tuple[Edu, int]]:
    with kernel.open_fd(vfio_device) as dev:
        bind_iommufd(dev, iommufd.number)
        ioas = ioas_alloc(iommufd)
        attach_pt(dev, ioas)
        cfg = region_offset(dev, uapi.VFIO_PCI_CONFIG_REGION_INDEX)
        (cmd,) = struct.unpack("<H", dev.pread(2, cfg + PCI_COMMAND))
        dev.pwrite(
            struct.pack("<H", cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER), cfg + PCI_COMMAND
        )
        yield Edu(dev, region_offset(dev, uapi.VFIO_PCI_BAR0_REGION_INDEX)), ioas


def victim_page(kind: str) -> tuple[int, int]:
    """(va, memfd or -1): one page of `kind` memory, not owned by any Python object."""
    if kind == "private":
        return sys_mmap(None, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), -1
    if kind == "shared":
        return sys_mmap(None, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS), -1
    memfd = os.memfd_create("fastmap-pinning")
    os.ftruncate(memfd, PAGE)
    return sys_mmap(None, mmap.MAP_SHARED, memfd), memfd


@pytest.mark.parametrize("kind", ["private", "shared", "memfd"])
@pytest.mark.parametrize("change", ["remap", "dontneed", "fork"])
def test_device_keeps_the_pinned_page(
    kernel: Kernel,
    iommufd: Fd,
    edu: tuple[Edu, int],
    kind: str,
    change: str,
) -> None:
    device, ioas = edu
    payload = os.urandom(PAGE)
    src = mmap.mmap(-1, PAGE)
    check = mmap.mmap(-1, PAGE)
    src.write(payload)
    src_va = ctypes.addressof(ctypes.c_char.from_buffer(src))
    check_va = ctypes.addressof(ctypes.c_char.from_buffer(check))
    va, memfd = victim_page(kind)
    fill(va, b"A" * PAGE)
    try:
        ioas_map(iommufd, ioas, va, PAGE, iova=VICTIM_IOVA)
        ioas_map(iommufd, ioas, src_va, PAGE, iova=SRC_IOVA)
        ioas_map(iommufd, ioas, check_va, PAGE, iova=CHECK_IOVA)
        device.dma(SRC_IOVA, EDU_BUFFER, to_ram=False)  # the device now holds the payload

        if change == "remap":
            assert libc.munmap(va, PAGE) == 0
            assert sys_mmap(va, MAP_FIXED | mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) == va
            fill(va, b"N" * PAGE)
            expect_at_va = b"N" * PAGE  # the new mapping is not the pinned page
        elif change == "dontneed":
            assert libc.madvise(va, PAGE, mmap.MADV_DONTNEED) == 0
            # Private memory gets a fresh zero page; shared memory refaults the same page.
            expect_at_va = bytes(PAGE) if kind == "private" else payload
        else:
            pid = os.fork()
            if pid == 0:  # the child breaks copy-on-write and leaves
                fill(va, b"C" * PAGE)
                os._exit(0)
            assert os.waitpid(pid, 0)[1] == 0
            expect_at_va = payload  # the parent keeps the pinned page (shared: also the child)

        device.dma(EDU_BUFFER, VICTIM_IOVA, to_ram=True)
        assert read(va) == expect_at_va

        # Read the IOVA back through the device: the pinned page has the payload.
        check.write(b"Z" * PAGE)
        device.dma(CHECK_IOVA, EDU_BUFFER, to_ram=False)
        device.dma(VICTIM_IOVA, EDU_BUFFER, to_ram=False)
        device.dma(EDU_BUFFER, CHECK_IOVA, to_ram=True)
        assert bytes(check[:]) == payload
    finally:
        for iova in (VICTIM_IOVA, SRC_IOVA, CHECK_IOVA):
            with contextlib.suppress(OSError):
                ioas_unmap(iommufd, ioas, iova, PAGE)
        libc.munmap(va, PAGE)
        if memfd >= 0:
            os.close(memfd)


@pytest.mark.parametrize("kind", ["private", "shared", "memfd"])
def test_childs_dma_reaches_the_parents_pinned_page(
    kernel: Kernel, iommufd: Fd, edu: tuple[Edu, int], kind: str
) -> None:
    """The child shares the iommufd and the device: a DMA it starts writes the page the
    parent pinned (for private memory the parent's, not the child's copy of it)."""
    device, ioas = edu
    payload = os.urandom(PAGE)
    src = mmap.mmap(-1, PAGE)
    src.write(payload)
    src_va = ctypes.addressof(ctypes.c_char.from_buffer(src))
    va, memfd = victim_page(kind)
    fill(va, b"A" * PAGE)
    try:
        ioas_map(iommufd, ioas, va, PAGE, iova=VICTIM_IOVA)
        ioas_map(iommufd, ioas, src_va, PAGE, iova=SRC_IOVA)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                device.dma(SRC_IOVA, EDU_BUFFER, to_ram=False)
                device.dma(EDU_BUFFER, VICTIM_IOVA, to_ram=True)
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        assert read(va) == payload
    finally:
        for iova in (VICTIM_IOVA, SRC_IOVA):
            with contextlib.suppress(OSError):
                ioas_unmap(iommufd, ioas, iova, PAGE)
        libc.munmap(va, PAGE)
        if memfd >= 0:
            os.close(memfd)
