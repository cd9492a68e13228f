"""Map throughput with an IOMMU domain attached, so every map pins (`fastmap bench pinned`).

A VFIO device (QEMU's edu: plugged into the simulated machine, or the VM's real one) is
attached to an IOAS the way QEMU does it, which gives the IOAS a paging domain: each map
now pins the pages and writes IOPTEs, as a real driver's does. The same fixed-IOVA mappings
of one page size (4 KiB, 2 MiB or 1 GiB) are made four ways, interleaved within each round:

- ``naive``: a ctypes struct and one IOMMU_IOAS_MAP per entry from Python;
- ``batch``: ``Ioas.map_batch``, one call;
- ``batch-threads``: the same with ``threads=N``;
- ``floor``: a bare C++ loop of IOMMU_IOAS_MAP on the same seam.

The memory is one buffer of huge pages where the machine has them free (hugetlbfs), else
anonymous memory advised for THP; the row says which and why. Mappings cycle over the
buffer (a VA may be mapped at several IOVAs; each map pins again), so the memory pinned at
once stays small while the IOVA space covered is entries x page size.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np

from fastmap import _core, uapi
from fastmap._tools.bench_map import _naive as map_one_by_one
from fastmap._tools.bench_progress import quiet
from fastmap.ioas import Ioas
from fastmap.kernel import Kernel

__all__ = [
    "DEFAULT_ENTRIES",
    "METHODS",
    "PAGE_SIZES",
    "Buffer",
    "PinnedRow",
    "attached_ioas",
    "hugepage_buffer",
    "run_pinned_benchmark",
]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE_SIZES: dict[str, int] = {"4KiB": 4 * KiB, "2MiB": 2 * MiB, "1GiB": GiB}
#: Mappings per page size when --entries is not given.
DEFAULT_ENTRIES: dict[str, int] = {"4KiB": 20_000, "2MiB": 2_000, "1GiB": 16}
#: Distinct pages the mappings cycle over (the memory pinned at once is this x page size).
POOL_PAGES: dict[str, int] = {"4KiB": 4096, "2MiB": 16, "1GiB": 1}
METHODS = ("naive", "batch", "batch-threads", "floor")
EDU_VENDOR, EDU_DEVICE = 0x1234, 0x11E8
SIM_BDF = "0000:00:1e.0"  # the bench's own edu on the simulated machine
IOVA_BASE = 1 << 32  # 1 GiB aligned: huge IOPTEs stay possible
_PROT = uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE


@dataclass(frozen=True)
class PinnedRow:
    page: str  # "4KiB", "2MiB", "1GiB"
    backing: str  # what memory was mapped, and why if not the page size asked for
    method: str
    entries: int
    length: int  # bytes per mapping
    seconds: float
    threads: int = 1
    fallback: str = ""  # why the memory is not huge pages of the page size, if it is not

    @property
    def maps_per_second(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else float("inf")

    @property
    def gib_per_second(self) -> float:
        return self.entries * self.length / GiB / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Buffer:
    """`pages` pages of `page_size` bytes at `va`, and a description of what backs them."""

    va: int
    page_size: int
    pages: int
    backing: str  # "hugetlb", "anon" or "anon+THP"
    fallback: str  # why not hugetlb pages of page_size ("" when they are)
    _maps: tuple[mmap.mmap, ...]

    def close(self) -> None:
        for m in self._maps:
            m.close()


def hugepage_buffer(page_size: int, pages: int) -> Buffer:
    """Memory for `pages` pages of `page_size`: hugetlbfs when free huge pages of that size
    exist, else anonymous memory aligned to it and advised for THP (2 MiB folios at most).
    Every page is touched, so faults are not part of what is timed."""
    length = page_size * pages
    if page_size > mmap.PAGESIZE:
        shift = page_size.bit_length() - 1
        try:
            fd = os.memfd_create("fastmap-bench", os.MFD_HUGETLB | (shift << 26))
        except OSError as e:
            reason = f"hugetlbfs memfd: {e.strerror}"
        else:
            try:
                os.ftruncate(fd, length)
                m = mmap.mmap(fd, length, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
            except OSError as e:
                reason = f"no free {_size(page_size)} huge pages ({e.strerror})"
            else:
                return Buffer(_address(m), page_size, pages, "hugetlb", "", (m,))
            finally:
                os.close(fd)
    # Anonymous, over-allocated to align the start to the page size.
    m = mmap.mmap(-1, length + page_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = _address(m)
    start = -base % page_size
    if page_size > mmap.PAGESIZE:
        m.madvise(mmap.MADV_HUGEPAGE, start, length)
    view = np.frombuffer(m, np.uint8)[start : start + length]
    view[:: mmap.PAGESIZE] = 1
    del view
    if page_size == mmap.PAGESIZE:
        return Buffer(base + start, page_size, pages, "anon", "", (m,))
    why = f"{reason}: anonymous memory advised for THP instead (2 MiB folios at most)"
    return Buffer(base + start, page_size, pages, "anon+THP", why, (m,))


def _address(m: mmap.mmap) -> int:
    return int(np.frombuffer(m, np.uint8, count=1).ctypes.data)


@contextmanager
def attached_ioas(kernel: Kernel) -> Iterator[Ioas]:
    """An IOAS with an edu device attached (a paging domain), as QEMU attaches it; on the
    simulator an edu device behind a simulated VT-d is plugged in first."""
    from fastmap.lifecycle.address_space import AddressSpace
    from fastmap.lifecycle.backend import IOMMUFDBackend
    from fastmap.lifecycle.device import VFIODevice, find_pci_devices

    machine = getattr(kernel, "machine", None)
    bdfs = find_pci_devices(kernel, EDU_VENDOR, EDU_DEVICE)
    if machine is not None:
        # The process's simulated machine is shared: the bench plugs in its own device (once)
        # rather than take one that other code may hold.
        if SIM_BDF not in bdfs:
            machine.add_pci_device(bdf=SIM_BDF, vendor=EDU_VENDOR, device=EDU_DEVICE, iommu="vtd")
        bdfs = [SIM_BDF]
    if not bdfs:
        raise RuntimeError("no edu device (PCI 1234:11e8) bound to vfio-pci on this machine")
    with ExitStack() as stack:
        backend = stack.enter_context(IOMMUFDBackend(kernel=kernel))
        space = stack.enter_context(AddressSpace("bench"))
        dev = stack.enter_context(VFIODevice(bdfs[0], kernel=kernel).attach(space, backend))
        assert dev.container is not None
        ioas: Ioas = dev.container.ioas  # type: ignore[attr-defined]
        yield ioas


def _naive(ioas: Ioas, vas: np.ndarray, lengths: np.ndarray, iovas: np.ndarray) -> None:
    map_one_by_one(ioas.kernel, ioas.iommufd, ioas, vas, lengths, iovas)


def _iova_base(ioas: Ioas, span: int, page: int) -> int:
    """The lowest IOVA, from 4 GiB up where possible, aligned to max(page, 1 GiB) where the
    span fits, in the domain's usable ranges (a paging domain's aperture can be narrow)."""
    ranges = ioas.iova_ranges()
    for floor, align in ((IOVA_BASE, GiB), (0, GiB), (0, page)):
        align = max(align, page)
        for r in ranges:
            start = -(-max(r.start, floor) // align) * align
            if start + span - 1 <= r.last:
                return start
    usable = ", ".join(f"[{r.start:#x}, {r.last:#x}]" for r in ranges)
    raise ValueError(f"{span:#x} bytes of IOVA do not fit the domain's usable ranges {usable}")


def _batch(
    ioas: Ioas, vas: np.ndarray, lengths: np.ndarray, iovas: np.ndarray, threads: int
) -> None:
    ioas.map_batch(vas, lengths, iovas, threads=threads)


def _floor(ioas: Ioas, vas: np.ndarray, lengths: np.ndarray, iovas: np.ndarray) -> None:
    rc = _core.map_loop(ioas.kernel.core, ioas.iommufd, ioas.id, vas, lengths, iovas, _PROT)
    if rc < 0:
        raise OSError(-rc, "map_loop failed")


def run_pinned_benchmark(
    kernel: Kernel,
    pages: tuple[str, ...] = tuple(PAGE_SIZES),
    entries: int | None = None,
    repeat: int = 3,
    seconds: float | None = None,
    threads: int = 2,
    on_step: Callable[[str], object] = quiet,
) -> list[PinnedRow]:
    """Best-of-`repeat` map time per page size and method, with a domain attached."""
    rows: list[PinnedRow] = []
    with attached_ioas(kernel) as ioas:
        runners: dict[str, Callable[[Ioas, np.ndarray, np.ndarray, np.ndarray], None]] = {
            "naive": _naive,
            "batch": lambda io, v, n, i: _batch(io, v, n, i, 1),
            "batch-threads": lambda io, v, n, i: _batch(io, v, n, i, threads),
            "floor": _floor,
        }
        for page in pages:
            size = PAGE_SIZES[page]
            n = DEFAULT_ENTRIES[page] if entries is None else entries
            buf = hugepage_buffer(size, min(POOL_PAGES[page], n))
            try:
                idx = np.arange(n, dtype=np.uint64)
                vas = np.uint64(buf.va) + (idx % np.uint64(buf.pages)) * np.uint64(size)
                lengths = np.full(n, size, dtype=np.uint64)
                iovas = np.uint64(_iova_base(ioas, n * size, size)) + idx * np.uint64(size)
                best = {m: float("inf") for m in METHODS}
                spent = 0.0
                for r in range(repeat):
                    for method in METHODS:
                        on_step(f"pinned {n:,} x {page}: {method}, round {r + 1}/{repeat}")
                        t0 = time.perf_counter()
                        runners[method](ioas, vas, lengths, iovas)
                        dt = time.perf_counter() - t0
                        best[method] = min(best[method], dt)
                        spent += dt
                        ioas.unmap_all()  # untimed; also removes the maps made around fastmap
                    if seconds is not None and spent >= seconds:
                        break
                rows += [
                    PinnedRow(
                        page,
                        buf.backing,
                        m,
                        n,
                        size,
                        best[m],
                        threads if m == "batch-threads" else 1,
                        buf.fallback,
                    )
                    for m in METHODS
                ]
            finally:
                buf.close()
    return rows


def _size(n: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} B"
