"""Guest RAM blocks: host memory of this process placed at a guest physical address.

A `RamBlock` owns its memory (an mmap) and, for the file-backed kinds, the file:

* "anon":    private anonymous memory (what QEMU uses for plain `-m` RAM);
* "memfd":   a sealed-size memfd mapped shared (QEMU's memory-backend-memfd); `fd` is kept
             so the memory can also be mapped with IOMMU_IOAS_MAP_FILE;
* "hugetlb": a memfd on hugetlbfs (MFD_HUGETLB), where the host has free huge pages.

The memory is the same whichever kernel the devices use: the simulated kernel runs in
this process and pins and translates these very pages.

Lifetime: devices may DMA into a block while it is mapped in a container. Every mapping of
a block holds one of its leases (`lease()`, passed as `Ioas.map(..., keep=lease)`), and the
engine drops a lease only with the unmap that removes its mapping from the kernel. `close()`
refuses (RamInUseError) while any lease is held: the memory would be unmapped from the
process while a device can still write it, and the next mmap at that address would receive
those writes. Unmap first (`AddressSpace.remove_ram` unmaps from every container first).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from typing import Literal

from fastmap import _checks
from fastmap._closing import Closing
from fastmap._libc import MAP_FAILED as _MAP_FAILED
from fastmap._libc import libc as _libc
from fastmap.errors import FastmapError, RamInUseError
from fastmap.prot import Prot
from fastmap.prot import check as check_prot

RamKind = Literal["anon", "memfd", "hugetlb"]
RAM_KINDS: tuple[RamKind, ...] = ("anon", "memfd", "hugetlb")
PAGE_SIZE = mmap.PAGESIZE
_HUGE_SHIFT = 26  # MFD_HUGE_SHIFT: log2(page size) goes in bits 26..31 of the flags



class RamUnavailableError(FastmapError, OSError):
    """The requested kind of memory cannot be had here (e.g. no free huge pages)."""


def default_hugepage_size() -> int:
    """The kernel's default huge page size (Hugepagesize in /proc/meminfo), or 2 MiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("Hugepagesize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 2 << 20


def free_hugepages(page_size: int) -> int:
    """How many huge pages of `page_size` are free (0 when the size is not supported)."""
    path = f"/sys/kernel/mm/hugepages/hugepages-{page_size // 1024}kB/free_hugepages"
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


class RamLease:
    """Held by each mapping of a RamBlock: the block cannot be closed while one lives.

    A lease given to a map call belongs to the mapping: the engine drops it with the unmap,
    and a failed map releases it at once (an exception's traceback may outlive the call)."""

    __slots__ = ("_block",)

    def __init__(self, block: RamBlock) -> None:
        self._block: RamBlock | None = block
        block._leases += 1

    def release(self) -> None:
        block, self._block = self._block, None
        if block is not None:
            block._leases -= 1

    def __del__(self) -> None:
        self.release()


class RamBlock(Closing):
    """`length` bytes of host memory that a guest sees at `gpa` (IOVA = GPA for devices)."""

    def __init__(
        self,
        length: int,
        gpa: int,
        kind: RamKind = "anon",
        *,
        name: str | None = None,
        prot: Prot = Prot.RW,
        hugepage_size: int | None = None,
    ) -> None:
        if kind not in RAM_KINDS:
            raise ValueError(f"RAM kind must be one of {RAM_KINDS}, not {kind!r}")
        self.kind: RamKind = kind
        self.page_size = PAGE_SIZE
        if kind == "hugetlb":
            self.page_size = hugepage_size or default_hugepage_size()
        length = _checks.integer("length", length)
        gpa = _checks.integer("gpa", gpa)
        if gpa + length > 1 << 64:
            raise ValueError(
                f"gpa={gpa:#x} + length={length:#x} runs past the 64-bit address space"
            )
        if length <= 0 or length % self.page_size:
            raise ValueError(
                f"RAM length {length:#x} must be a positive multiple of {self.page_size:#x}"
            )
        if gpa < 0 or gpa % self.page_size:
            raise ValueError(f"guest address {gpa:#x} must be aligned to {self.page_size:#x}")
        self.length = length
        self.gpa = gpa
        #: what devices may do with it (QEMU's read-only RAM is Prot.READ)
        self.prot = check_prot(prot)
        self.name = name or f"{kind}@{gpa:#x}"
        self.fd: int | None = None
        self._va: int | None = None
        self._leases = 0  # mappings holding this block (see RamLease)
        self._allocate()

    def _allocate(self) -> None:
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        if self.kind == "anon":
            flags, fd = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1
        else:
            mfd_flags = os.MFD_CLOEXEC
            if self.kind == "hugetlb":
                needed = self.length // self.page_size
                free = free_hugepages(self.page_size)
                if free < needed:
                    sysfs = f"/sys/kernel/mm/hugepages/hugepages-{self.page_size // 1024}kB"
                    raise RamUnavailableError(
                        errno.ENOMEM,
                        f"hugetlb RAM needs {needed} free {self.page_size >> 10} KiB huge pages, "
                        f"the host has {free}; reserve some as root "
                        f"(echo {needed} > {sysfs}/nr_hugepages) or use kind='anon'/'memfd'",
                    )
                mfd_flags |= os.MFD_HUGETLB | (self.page_size.bit_length() - 1) << _HUGE_SHIFT
            fd = os.memfd_create(self.name, mfd_flags)
            try:
                os.ftruncate(fd, self.length)
            except OSError:
                os.close(fd)
                raise
            flags = mmap.MAP_SHARED
            self.fd = fd
        va = _libc.mmap(None, self.length, prot, flags, fd, 0)
        if va in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            raise RamUnavailableError(
                err, f"mmap of {self.length:#x} bytes of {self.kind} RAM: {os.strerror(err)}"
            )
        self._va = int(va)

    # --- access --------------------------------------------------------------------------
    @property
    def va(self) -> int:
        """The host virtual address of the block's first byte."""
        if self._va is None:
            raise ValueError(f"RAM block {self.name} is closed")
        return self._va

    @property
    def closed(self) -> bool:
        return self._va is None

    @property
    def end(self) -> int:
        """The first guest address after the block."""
        return self.gpa + self.length

    def contains(self, gpa: int, length: int = 1) -> bool:
        return self.gpa <= gpa and gpa + length <= self.end

    def _check(self, offset: int, length: int) -> int:
        if offset < 0 or length < 0 or offset + length > self.length:
            raise ValueError(
                f"[{offset:#x}, +{length:#x}) is outside RAM block {self.name} "
                f"({self.length:#x} bytes)"
            )
        return self.va + offset

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` into the block."""
        return ctypes.string_at(self._check(offset, length), length)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy `data` into the block at `offset`."""
        payload = bytes(data)
        ctypes.memmove(self._check(offset, len(payload)), payload, len(payload))

    # --- lifetime ------------------------------------------------------------------------------
    def lease(self) -> RamLease:
        """A lease for one mapping of this block: pass it as `Ioas.map(..., keep=...)`."""
        self.va  # refuses a closed block  # noqa: B018
        return RamLease(self)

    @property
    def mapped(self) -> bool:
        """Whether a mapping (for a device) still holds this block."""
        return self._leases > 0

    def close(self) -> None:
        """Release the memory (idempotent). Refused with RamInUseError while a device
        mapping still holds the block: unmap it first."""
        if self._leases:
            raise RamInUseError(
                f"RAM block {self.name} is still mapped for a device ({self._leases} "
                "mapping(s)); unmap it (AddressSpace.remove_ram) before closing it"
            )
        va, self._va = self._va, None
        if va is not None:
            _libc.munmap(va, self.length)
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __repr__(self) -> str:
        ro = "" if self.prot & Prot.WRITE else " ro"
        return f"<RamBlock {self.name} gpa [{self.gpa:#x}, {self.end:#x}) {self.kind}{ro}>"
