"""DMA memory: page-, 2 MiB- and 1 GiB-aligned host memory for devices, as numpy arrays.

    with DmaMemory(4 << 20, kind="thp", align=2 << 20) as mem:   # 2 MiB-aligned, THP-advised
        iova = ioas.map(mem)                 # the whole buffer; or ioas.map(mem.array[:n])
        mem.array[:16] = 0xFF                # what the device sees at iova
        ioas.unmap(iova, mem.length)

Kinds (what DPDK memzones, spdk_dma_malloc and libvfn offer):

* "anon":    private anonymous memory;
* "thp":     anonymous memory advised MADV_HUGEPAGE (2 MiB-aligned by default), so the kernel
             backs it with transparent huge pages where it can;
* "memfd":   a memfd mapped shared; `fd` is kept, for IOMMU_IOAS_MAP_FILE or another process;
* "hugetlb": a memfd on hugetlbfs (MFD_HUGETLB) of `hugepage_size` pages, where the host has
             free huge pages (RamUnavailableError with the command that reserves some, else).

`align` (a power of two, at least a page: 4 KiB, 2 MiB, 1 GiB...) is the alignment of the first
byte's virtual address; the length is rounded up to the kind's page size.

Lifetime: every mapping for a device holds a lease (`lease()`); `Ioas.map` takes one by itself
when it maps this memory or any buffer or VA inside it. `close()` refuses (RamInUseError, EBUSY)
while a lease is held: the memory would go back to the process while a device can still write
it. Arrays handed out stay valid after `close()`: the memory is returned to the system when
the last of them is gone (their base holds it), so no array ever points at freed memory.

`fastmap.RamBlock` (guest RAM at a guest physical address) is DmaMemory with a `gpa`.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import mmap
import os
import threading
import weakref
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fastmap import _checks
from fastmap._closing import Closing
from fastmap._libc import MAP_FAILED as _MAP_FAILED
from fastmap._libc import MAP_NORESERVE as _MAP_NORESERVE
from fastmap._libc import libc as _libc
from fastmap.errors import FastmapError, RamInUseError

MemoryKind = Literal["anon", "thp", "memfd", "hugetlb"]
MEMORY_KINDS: tuple[MemoryKind, ...] = ("anon", "thp", "memfd", "hugetlb")
PAGE_SIZE = mmap.PAGESIZE
HUGE_2M = 2 << 20
HUGE_1G = 1 << 30
_HUGE_SHIFT = 26  # MFD_HUGE_SHIFT: log2(page size) goes in bits 26..31 of the flags
_MADV_HUGEPAGE = 14
_MAP_FIXED = 0x10
_PROT_NONE = 0  # the mmap module has it only from Python 3.13


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
    return HUGE_2M


def free_hugepages(page_size: int) -> int:
    """How many huge pages of `page_size` are free (0 when the size is not supported)."""
    path = f"/sys/kernel/mm/hugepages/hugepages-{page_size // 1024}kB/free_hugepages"
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


class MemoryLease:
    """Held by each mapping of a DmaMemory: the memory cannot be closed while one lives.

    A lease given to a map call belongs to the mapping: the engine drops it with the unmap,
    and a failed map releases it at once (an exception's traceback may outlive the call)."""

    __slots__ = ("_memory",)

    def __init__(self, memory: DmaMemory) -> None:
        self._memory: DmaMemory | None = memory
        memory._leases += 1

    def release(self) -> None:
        memory, self._memory = self._memory, None
        if memory is not None:
            memory._leases -= 1

    def __del__(self) -> None:
        self.release()


class DmaMemory(Closing):
    """`length` bytes of aligned host memory for devices (see the module docstring)."""

    def __init__(
        self,
        length: int,
        kind: MemoryKind = "anon",
        *,
        align: int | None = None,
        name: str | None = None,
        hugepage_size: int | None = None,
    ) -> None:
        if kind not in MEMORY_KINDS:
            raise ValueError(f"memory kind must be one of {MEMORY_KINDS}, not {kind!r}")
        self.kind: MemoryKind = kind
        #: the granule the memory is made of (the huge page size for hugetlb)
        self.page_size = PAGE_SIZE
        if hugepage_size is not None and kind != "hugetlb":
            raise ValueError(f"hugepage_size is for kind='hugetlb', not {kind!r}")
        if kind == "hugetlb":
            size = hugepage_size or default_hugepage_size()
            self.page_size = _checks.integer("hugepage_size", size)
        length = _checks.integer("length", length)
        if length <= 0:
            raise ValueError(f"length must be positive, got {length:#x}")
        default_align = HUGE_2M if kind == "thp" else self.page_size
        align = default_align if align is None else _checks.integer("align", align)
        if align < self.page_size or align & (align - 1):
            raise ValueError(
                f"align={align:#x} must be a power of two of at least the page size "
                f"{self.page_size:#x} (e.g. 4 KiB, 2 MiB, 1 GiB)"
            )
        self.align = align
        self.length = self._round_length(length)
        self.name = name or f"{kind}-{self.length:#x}"
        self.fd: int | None = None
        self._va: int | None = None
        self._backing: ctypes.Array[ctypes.c_char] | None = None
        self._leases = 0  # mappings holding this memory (see MemoryLease)
        self._allocate()

    def _round_length(self, length: int) -> int:
        """DmaMemory rounds the length up to its page size (RamBlock insists on it)."""
        return -(-length // self.page_size) * self.page_size

    def _allocate(self) -> None:
        fd = -1
        if self.kind in ("memfd", "hugetlb"):
            fd = self._make_memfd()
        try:
            va = _map_aligned(self.length, self.align, fd)
        except OSError as e:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            raise RamUnavailableError(
                e.errno, f"mmap of {self.length:#x} bytes of {self.kind} memory: {e.strerror}"
            ) from None
        if self.kind == "thp":
            _libc.madvise(va, self.length, _MADV_HUGEPAGE)  # advice: failure changes nothing
        self._va = va
        # Arrays are views of this ctypes object: the pages go back to the system when it
        # (hence every array) is gone, and close() has dropped it.
        self._backing = (ctypes.c_char * self.length).from_address(va)
        weakref.finalize(self._backing, _release, va, self.length, self.fd)
        _register(self)

    def _make_memfd(self) -> int:
        flags = os.MFD_CLOEXEC
        if self.kind == "hugetlb":
            needed = self.length // self.page_size
            free = free_hugepages(self.page_size)
            if free < needed:
                sysfs = f"/sys/kernel/mm/hugepages/hugepages-{self.page_size // 1024}kB"
                raise RamUnavailableError(
                    errno.ENOMEM,
                    f"hugetlb memory needs {needed} free {self.page_size >> 10} KiB huge pages, "
                    f"the host has {free}; reserve some as root "
                    f"(echo {needed} > {sysfs}/nr_hugepages) or use kind='anon'/'thp'/'memfd'",
                )
            flags |= os.MFD_HUGETLB | (self.page_size.bit_length() - 1) << _HUGE_SHIFT
        fd = os.memfd_create(self.name, flags)
        try:
            os.ftruncate(fd, self.length)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        return fd

    # --- access --------------------------------------------------------------------------
    @property
    def va(self) -> int:
        """The host virtual address of the first byte."""
        if self._va is None:
            raise ValueError(f"memory {self.name} is closed")
        return self._va

    @property
    def closed(self) -> bool:
        return self._va is None

    @property
    def array(self) -> npt.NDArray[np.uint8]:
        """All of the memory as a writable uint8 numpy array (a view, not a copy)."""
        array: npt.NDArray[np.uint8] = self.view(np.uint8)
        return array

    def view(self, dtype: npt.DTypeLike = np.uint8, count: int = -1, offset: int = 0) -> Any:
        """The memory as a 1-D numpy array of `dtype` (`count` items from byte `offset`)."""
        backing = self._backing
        if backing is None:
            raise ValueError(f"memory {self.name} is closed")
        return np.frombuffer(memoryview(backing), dtype=dtype, count=count, offset=offset)

    def _check(self, offset: int, length: int) -> int:
        if offset < 0 or length < 0 or offset + length > self.length:
            raise ValueError(
                f"[{offset:#x}, +{length:#x}) is outside {self.name} ({self.length:#x} bytes)"
            )
        return self.va + offset

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`."""
        return ctypes.string_at(self._check(offset, length), length)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy `data` in at `offset`."""
        payload = bytes(data)
        ctypes.memmove(self._check(offset, len(payload)), payload, len(payload))

    # --- lifetime ------------------------------------------------------------------------------
    def lease(self) -> MemoryLease:
        """A lease for one mapping of this memory: pass it as `Ioas.map(..., keep=...)`."""
        self.va  # refuses closed memory  # noqa: B018
        return MemoryLease(self)

    @property
    def mapped(self) -> bool:
        """Whether a mapping (for a device) still holds this memory."""
        return self._leases > 0

    def close(self) -> None:
        """Give the memory back (idempotent; arrays still viewing it keep it until they
        go). Refused with RamInUseError while a device mapping holds it: unmap first."""
        if self._leases:
            raise RamInUseError(
                f"{self.name} is still mapped for a device ({self._leases} mapping(s)); "
                "unmap it before closing it"
            )
        if self._va is not None:
            _unregister(self)
        self._va = None
        self._backing = None  # the finalizer unmaps once no array needs the pages
        self.fd = None  # closed by the finalizer with the mapping

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"va {self._va:#x}"
        return (
            f"<DmaMemory {self.name} {self.kind} {self.length:#x} bytes "
            f"align {self.align:#x} {state}>"
        )


def _map_aligned(length: int, align: int, fd: int) -> int:
    """mmap `length` bytes (anonymous private, or shared of `fd`) at an `align`-aligned VA:
    reserve length + align of address space, put the memory at the aligned point, give back
    the ends."""
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS if fd < 0 else mmap.MAP_SHARED
    if align <= PAGE_SIZE:
        return _mmap(None, length, rw, flags, fd)
    span = length + align
    reserved = _mmap(
        None, span, _PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1
    )
    start = -(-reserved // align) * align
    try:
        _mmap(start, length, rw, flags | _MAP_FIXED, fd)
    except OSError:
        _libc.munmap(reserved, span)
        raise
    if start > reserved:
        _libc.munmap(reserved, start - reserved)
    if reserved + span > start + length:
        _libc.munmap(start + length, reserved + span - start - length)
    return start


def _mmap(addr: int | None, length: int, prot: int, flags: int, fd: int) -> int:
    va = _libc.mmap(addr, length, prot, flags, fd, 0)
    if va in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(va)


def _release(va: int, length: int, fd: int | None) -> None:
    _libc.munmap(va, length)
    if fd is not None:
        os.close(fd)


# --- which DmaMemory holds an address: Ioas.map leases the owner of what it maps ------------
_lock = threading.Lock()
_starts: list[int] = []
_owners: list[weakref.ref[DmaMemory]] = []


def _register(memory: DmaMemory) -> None:
    with _lock:
        for i in reversed([i for i, ref in enumerate(_owners) if ref() is None]):
            del _starts[i], _owners[i]  # collected without close()
        i = bisect.bisect(_starts, memory.va)
        _starts.insert(i, memory.va)
        _owners.insert(i, weakref.ref(memory))


def _unregister(memory: DmaMemory) -> None:
    with _lock:
        i = bisect.bisect_left(_starts, memory.va)
        if i < len(_starts) and _owners[i]() is memory:
            del _starts[i], _owners[i]


def owner_of(va: int, length: int) -> DmaMemory | None:
    """The open DmaMemory (or RamBlock) that holds all of [va, va + length), if any."""
    with _lock:
        i = bisect.bisect_right(_starts, va) - 1
        if i < 0:
            return None
        memory = _owners[i]()
    if memory is None or memory.closed or va + length > memory.va + memory.length:
        return None
    return memory


def leases_for(vas: npt.NDArray[np.uint64], lengths: npt.NDArray[np.uint64]) -> list[object] | None:
    """A lease of the DmaMemory holding each entry [vas[i], +lengths[i]) (None for an entry
    outside every one), or None when no entry is inside one: what a batch of raw VAs keeps."""
    with _lock:
        if not _starts:
            return None
        owners = [ref() for ref in _owners]
    live = [(m.va, m.va + m.length, m) for m in owners if m is not None and not m.closed]
    if not live:
        return None
    starts = np.array([lo for lo, _, _ in live], np.uint64)
    ends = np.array([hi for _, hi, _ in live], np.uint64)
    at = np.searchsorted(starts, vas, side="right").astype(np.int64) - 1
    inside = (at >= 0) & (vas + lengths <= ends[np.maximum(at, 0)])
    if not inside.any():
        return None
    # One lease per memory, shared by its entries: it goes with the last of their mappings.
    leases = {int(j): live[j][2].lease() for j in np.unique(at[inside])}
    keep: list[object] = [None] * len(vas)
    for i in np.flatnonzero(inside):
        keep[i] = leases[int(at[i])]
    return keep
