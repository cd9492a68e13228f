"""Dirty-tracking benchmarks as data, for `fastmap bench dirty` (this module prints nothing).

    rows = run_dirty_benchmark()                 # full sizes, on the simulated kernel
    rows = run_dirty_benchmark(pages=1 << 14)    # a quick pass: every case on 64 MiB

Two families, each a list of `BenchRow`:

* `bitmap_rows`: dirty bitmap -> runs of dirty pages (`fastmap.bitmap.to_ranges`) for
  64 GiB of guest memory at 4 KiB pages with 10 % of the pages dirty at random, and for
  512 GiB with every page dirty, against a numpy implementation, a Python loop (timed on a
  smaller bitmap and scaled up) and `count_floor`, one plain popcount pass over the bitmap.
* `harvest_rows`: `fastmap.dirty.DirtyHarvester` on the simulated kernel, through the
  iommufd selftest mock domain (whose IOPTEs are 2 KiB, half a page): harvest throughput
  in GiB of guest memory per second at 4 KiB pages with 1 %, 10 % and 100 % dirty, and
  the harvest of 1 TiB of tracked guest memory with 1 % dirty, and of 1/64 ... all of it
  (the tracked-size sweep). The mock's aperture is under 2 GiB, so 1 TiB is 1024 IOASes
  with 1 GiB each (one dirty-tracking HWPT apiece, all mapping the same untouched 1 GiB of
  address space), harvested one after another.

`pages` sets every case's guest memory to that many 4 KiB pages (the harvest windows stay
within the mock's aperture: above 1 GiB the memory is split over IOASes of 1 GiB).
`seconds` bounds each case's time: no new round starts once it has used that much.
The workloads (`random_bitmap`, `MockDirtyBed`) and the baselines (`numpy_to_ranges`,
`python_to_ranges`) are public so that benchmarks/ can time them with pytest-benchmark.
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from numpy.typing import NDArray

from fastmap import bitmap, uapi
from fastmap._libc import MAP_NORESERVE as _MAP_NORESERVE
from fastmap._libc import libc as _libc
from fastmap._tools.bench_progress import quiet
from fastmap.dirty import DirtyHarvester, Harvest
from fastmap.kernel import Fd, Kernel

__all__ = [
    "BenchRow",
    "MockDirtyBed",
    "bitmap_rows",
    "harvest_rows",
    "numpy_to_ranges",
    "python_to_ranges",
    "random_bitmap",
    "run_dirty_benchmark",
]

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
PAGE = 4 * KiB
ALL_ONES = (1 << 64) - 1


@dataclasses.dataclass(frozen=True)
class BenchRow:
    """One measurement: `name` within `group`, best and median of `rounds` timed runs."""

    group: str
    name: str
    seconds: float
    median: float
    rounds: int
    guest_bytes: int  # guest memory the operation covers
    target: float | None = None  # seconds the issue asks for, if any
    note: str = ""

    @property
    def gib_per_s(self) -> float:
        """Guest memory covered per second (best run)."""
        return self.guest_bytes / GiB / self.seconds if self.seconds > 0 else float("inf")

    @property
    def meets_target(self) -> bool | None:
        return None if self.target is None else self.seconds < self.target


def measure(
    fn: Callable[[], object],
    rounds: int,
    setup: Callable[[], object] | None = None,
    seconds: float | None = None,
) -> tuple[float, float]:
    """(best, median) seconds of up to `rounds` calls of fn, each after an untimed setup();
    no call starts once the calls have used `seconds` (there is always one)."""
    times: list[float] = []
    for _ in range(rounds):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if seconds is not None and sum(times) >= seconds:
            break
    return min(times), statistics.median(times)


# --- bitmap -> ranges -------------------------------------------------------------------------


def random_bitmap(nbits: int, density: float, seed: int = 0) -> NDArray[np.uint64]:
    """A bitmap of nbits pages, each dirty with probability `density` (1.0: all dirty)."""
    words = bitmap.words_for(nbits)
    if density >= 1.0:
        bm = np.full(words, ALL_ONES, dtype=np.uint64)
    else:
        rng = np.random.default_rng(seed)
        bm = np.zeros(words, dtype=np.uint64)
        chunk = 1 << 24  # bits per step, to bound the temporary float array
        for first in range(0, 64 * words, chunk):
            bits = rng.random(min(chunk, 64 * words - first)) < density
            packed = np.packbits(bits, bitorder="little")
            bm[first // 64 : first // 64 + len(packed) // 8] = packed.view("<u8")
    if nbits % 64:
        bm[-1] &= np.uint64((1 << (nbits % 64)) - 1)
    return bm


def numpy_to_ranges(bm: NDArray[np.uint64], nbits: int) -> NDArray[np.uint64]:
    """The numpy way: unpack to bytes, difference, find the edges."""
    bits = np.unpackbits(
        bm.astype("<u8", copy=False).view(np.uint8), count=nbits, bitorder="little"
    )
    edges = np.diff(bits, prepend=np.uint8(0), append=np.uint8(0))  # 1: start, 255: end
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == 255)
    return np.column_stack((starts, ends - starts)).astype(np.uint64)


def python_to_ranges(bm: NDArray[np.uint64], nbits: int) -> list[tuple[int, int]]:
    """A plain Python loop, skipping words that cannot hold an edge."""
    runs: list[tuple[int, int]] = []
    start = -1
    for wi, w in enumerate(bm.tolist()):
        if (w == 0 and start < 0) or (w == ALL_ONES and start >= 0):
            continue
        base = 64 * wi
        for b in range(min(64, nbits - base)):
            if (w >> b) & 1:
                if start < 0:
                    start = base + b
            elif start >= 0:
                runs.append((start, base + b - start))
                start = -1
    if start >= 0:
        runs.append((start, nbits - start))
    return runs


@dataclasses.dataclass(frozen=True)
class BitmapCase:
    guest_bytes: int
    density: float
    target: float  # seconds for to_ranges
    python_shrink: int  # the Python loop runs on guest_bytes / python_shrink

    @property
    def nbits(self) -> int:
        return self.guest_bytes // PAGE

    @property
    def group(self) -> str:
        return f"to_ranges {_size(self.guest_bytes)}@4K {self.density:.0%} dirty"


BITMAP_CASES = (
    BitmapCase(64 * GiB, 0.10, target=12e-3, python_shrink=64),
    BitmapCase(512 * GiB, 1.00, target=4.6e-3, python_shrink=64),
)


def bitmap_rows(
    pages: int | None = None,
    repeat: int = 20,
    seconds: float | None = None,
    on_step: Callable[[str], object] = quiet,
) -> list[BenchRow]:
    """to_ranges vs numpy, a Python loop and count_floor, best of `repeat` (numpy: of fewer).

    `pages` replaces each case's size (rounded up to whole 64-bit words); the Python loop
    then runs on the whole bitmap when it is small."""
    rows = []
    rounds = repeat
    for case in BITMAP_CASES:
        if pages is not None:
            nbits = -(-pages // 64) * 64
            case = dataclasses.replace(
                case,
                guest_bytes=nbits * PAGE,
                python_shrink=max(1, min(case.python_shrink, nbits // (1 << 16))),
            )
        nbits = case.nbits
        on_step(f"dirty: {case.group}")
        bm = random_bitmap(nbits, case.density)
        best, med = measure(partial(bitmap.to_ranges, bm, nbits), rounds, seconds=seconds)
        floor, floor_med = measure(partial(bitmap.count_floor, bm), rounds, seconds=seconds)
        fast = BenchRow(
            case.group,
            "fastmap.bitmap.to_ranges",
            best,
            med,
            rounds,
            case.guest_bytes,
            case.target if pages is None else None,
            f"{best / floor:.1f}x count_floor (goal: within 2x)",
        )
        rows.append(fast)
        rows.append(
            BenchRow(
                case.group,
                "count_floor (one popcount pass)",
                floor,
                floor_med,
                rounds,
                case.guest_bytes,
            )
        )
        np_rounds = max(1, rounds // 5)
        np_best, np_med = measure(partial(numpy_to_ranges, bm, nbits), np_rounds, seconds=seconds)
        rows.append(
            BenchRow(
                case.group,
                "numpy (unpackbits/diff/flatnonzero)",
                np_best,
                np_med,
                np_rounds,
                case.guest_bytes,
                note=f"{np_best / best:.0f}x slower",
            )
        )
        k = case.python_shrink
        small_bits = nbits // k
        small = bm[: bitmap.words_for(small_bits)]
        py_best, py_med = measure(partial(python_to_ranges, small, small_bits), 1)
        rows.append(
            BenchRow(
                case.group,
                "Python loop" + (f" (on 1/{k}, scaled x{k})" if k > 1 else ""),
                py_best * k,
                py_med * k,
                1,
                case.guest_bytes,
                note=f"{py_best * k / best:.0f}x slower",
            )
        )
    return rows


# --- harvest on the simulated kernel ----------------------------------------------------------


class MockDirtyBed:
    """`count` IOASes on a kernel with the iommufd selftest (the simulator by default),
    each mapping `window` bytes at `iova` into one dirty-tracking mock HWPT, tracking on.

    Every IOAS maps the same anonymous reservation, which is never touched: the kernel pins
    it without faulting it in, so terabytes of tracked IOVA cost no memory beyond the
    page tables. Marking (`mark`) plays a device that wrote whole 4 KiB pages: both 2 KiB
    mock IOPTEs of each chosen page become dirty.
    """

    MOCK_PAGE = PAGE // 2

    def __init__(
        self, kernel: Kernel | None = None, count: int = 1, window: int = GiB, iova: int = GiB
    ) -> None:
        if kernel is None:
            from fastmap.sim import SimKernel

            kernel = SimKernel()
        self.kernel, self.window, self.iova = kernel, window, iova
        self.fd: Fd = kernel.open_fd("/dev/iommu")
        self._objects: list[int] = []
        self.hwpts: list[int] = []
        self._va = _libc.mmap(
            None,
            window,
            mmap.PROT_READ | mmap.PROT_WRITE,
            mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
            -1,
            0,
        )
        if self._va in (None, ctypes.c_void_p(-1).value):
            self.fd.close()
            raise OSError(ctypes.get_errno(), "mmap of the guest-memory reservation")
        try:
            self._build(count)
        except BaseException:
            self.close()
            raise

    def _build(self, count: int) -> None:
        dev_ioas = self._ioas_alloc()
        cmd = uapi.new(uapi.iommu_test_cmd, op=uapi.IOMMU_TEST_OP_MOCK_DOMAIN, id=dev_ioas)
        self.fd.ioctl(uapi.IOMMU_TEST_CMD, cmd)
        self._objects.append(int(cmd.u.mock_domain.out_stdev_id))
        idev = int(cmd.u.mock_domain.out_idev_id)
        for _ in range(count):
            ioas = self._ioas_alloc()
            alloc = uapi.new(
                uapi.iommu_hwpt_alloc,
                dev_id=idev,
                pt_id=ioas,
                flags=uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
            )
            self.fd.ioctl(uapi.IOMMU_HWPT_ALLOC, alloc)
            hwpt = int(alloc.out_hwpt_id)
            self._objects.append(hwpt)
            flags = (
                uapi.IOMMU_IOAS_MAP_FIXED_IOVA
                | uapi.IOMMU_IOAS_MAP_READABLE
                | uapi.IOMMU_IOAS_MAP_WRITEABLE
            )
            self.fd.ioctl(
                uapi.IOMMU_IOAS_MAP,
                uapi.new(
                    uapi.iommu_ioas_map,
                    ioas_id=ioas,
                    flags=flags,
                    user_va=self._va,
                    length=self.window,
                    iova=self.iova,
                ),
            )
            self.fd.ioctl(
                uapi.IOMMU_HWPT_SET_DIRTY_TRACKING,
                uapi.new(
                    uapi.iommu_hwpt_set_dirty_tracking,
                    hwpt_id=hwpt,
                    flags=uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
                ),
            )
            self.hwpts.append(hwpt)

    def _ioas_alloc(self) -> int:
        cmd = uapi.new(uapi.iommu_ioas_alloc)
        self.fd.ioctl(uapi.IOMMU_IOAS_ALLOC, cmd)
        self._objects.append(int(cmd.out_ioas_id))
        return int(cmd.out_ioas_id)

    @property
    def guest_bytes(self) -> int:
        return self.window * len(self.hwpts)

    def marks(self, density: float, seed: int = 0) -> NDArray[np.uint64]:
        """The IOMMU_TEST_OP_DIRTY bitmap (2 KiB bits) for `density` of the 4 KiB pages."""
        pages = random_bitmap(self.window // PAGE, density, seed)
        return bitmap.convert(pages, self.window // PAGE, PAGE, self.MOCK_PAGE)

    def mark(self, marks: NDArray[np.uint64], hwpts: Sequence[int] | None = None) -> int:
        """Marks the IOPTEs of `marks` dirty in each HWPT; returns how many were marked.

        The selftest looks IOPTEs up per MOCK_PAGE_SIZE, so it is marked at that size."""
        total = 0
        for hwpt in self.hwpts if hwpts is None else hwpts:
            cmd = uapi.new(uapi.iommu_test_cmd, op=uapi.IOMMU_TEST_OP_DIRTY, id=hwpt)
            d = cmd.u.dirty
            d.iova, d.length, d.page_size = self.iova, self.window, self.MOCK_PAGE
            d.uptr = marks.ctypes.data
            self.fd.ioctl(uapi.IOMMU_TEST_CMD, cmd)
            total += int(cmd.u.dirty.out_nr_dirty)
        return total

    def harvester(self) -> tuple[DirtyHarvester, list[NDArray[np.uint64]]]:
        """A harvester and one reusable bitmap buffer per HWPT (4 KiB pages)."""
        h = DirtyHarvester(self.kernel, self.fd)
        return h, [h.buffer([(self.iova, self.window)], PAGE) for _ in self.hwpts]

    def harvest_all(self, h: DirtyHarvester, outs: Sequence[NDArray[np.uint64]]) -> list[Harvest]:
        """One sync of every IOAS (its own HWPT and range) at 4 KiB, into `outs`."""
        ranges = [(self.iova, self.window)]
        return [
            h.harvest([hwpt], ranges, PAGE, out=out)
            for hwpt, out in zip(self.hwpts, outs, strict=True)
        ]

    def close(self) -> None:
        for obj in reversed(self._objects):
            self.fd.ioctl(uapi.IOMMU_DESTROY, uapi.new(uapi.iommu_destroy, id=obj))
        self._objects.clear()
        self.fd.close()
        if self._va:
            _libc.munmap(self._va, self.window)
            self._va = None

    def __enter__(self) -> MockDirtyBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: The mock domain's aperture ends below 2 GiB: one IOAS tracks at most 1 GiB at IOVA 1 GiB.
MAX_WINDOW = GiB


def harvest_rows(
    kernel: Kernel | None = None,
    pages: int | None = None,
    repeat: int = 10,
    seconds: float | None = None,
    on_step: Callable[[str], object] = quiet,
) -> list[BenchRow]:
    """Harvest throughput (1 GiB; 1/10/100 % dirty), and 1 TiB at 1 % with the tracked-size
    sweep (1, 4, 16, ... of its IOASes), best of `repeat`.

    `kernel` must offer the iommufd selftest (default: a new simulated kernel). `pages`
    replaces both sizes (rounded up to 2 MiB); above 1 GiB the memory is split over IOASes
    of 1 GiB, as the 1 TiB case is."""
    total = TiB if pages is None else max(2 * MiB, -(-pages * PAGE // (2 * MiB)) * 2 * MiB)
    window = MAX_WINDOW if pages is None else min(total, MAX_WINDOW)
    count = -(-total // window)
    rounds = repeat
    rows = []
    with MockDirtyBed(kernel, window=window) as bed:
        h, outs = bed.harvester()
        group = f"harvest {_size(window)}@4K ({bed.kernel.name}, mock HWPT, 2 KiB IOPTEs)"
        for density in (0.01, 0.10, 1.00):
            on_step(f"dirty: {group}, {density:.0%} dirty")
            marks = bed.marks(density)
            harvest, mark = partial(bed.harvest_all, h, outs), partial(bed.mark, marks)
            best, med = measure(harvest, rounds, setup=mark, seconds=seconds)
            rows.append(BenchRow(group, f"{density:.0%} dirty", best, med, rounds, window))
            clean, clean_med = measure(harvest, rounds, seconds=seconds)
            rows.append(
                BenchRow(
                    group,
                    f"{density:.0%} dirty, baseline: nothing dirty",
                    clean,
                    clean_med,
                    rounds,
                    window,
                )
            )
    on_step(f"dirty: setting up {count} IOASes x {_size(window)}")
    with MockDirtyBed(kernel, count=count, window=window) as bed:
        h, outs = bed.harvester()
        marks = bed.marks(0.01)
        group = f"harvest {_size(bed.guest_bytes)}@4K 1% dirty ({count} IOASes x {_size(window)})"
        ks = sorted({*(4**i for i in range(12) if 4**i < count), count})
        for k in ks:
            on_step(f"dirty: harvest {_size(k * window)} tracked")
            hwpts, outs_k = bed.hwpts[:k], outs[:k]

            best, med = measure(
                partial(_harvest_some, bed, h, hwpts, outs_k),
                rounds,
                setup=partial(bed.mark, marks, hwpts),
                seconds=seconds,
            )
            whole = k == count
            rows.append(
                BenchRow(
                    group,
                    f"{_size(k * window)} tracked, 1% dirty",
                    best,
                    med,
                    rounds,
                    k * window,
                    target=0.1 if whole and bed.guest_bytes == TiB else None,
                    note="DirtyHarvester" if whole else "",
                )
            )
        clean, clean_med = measure(lambda: bed.harvest_all(h, outs), rounds, seconds=seconds)
        rows.append(
            BenchRow(
                group,
                f"{_size(bed.guest_bytes)}, baseline: nothing dirty (the walk alone)",
                clean,
                clean_med,
                rounds,
                bed.guest_bytes,
            )
        )
    return rows


def _harvest_some(
    bed: MockDirtyBed, h: DirtyHarvester, hwpts: list[int], outs: list[NDArray[np.uint64]]
) -> None:
    for hwpt, out in zip(hwpts, outs, strict=True):
        h.harvest([hwpt], [(bed.iova, bed.window)], PAGE, out=out)


def run_dirty_benchmark(
    kernel: Kernel | None = None,
    repeat: int = 10,
    pages: int | None = None,
    seconds: float | None = None,
    on_step: Callable[[str], object] = quiet,
) -> list[BenchRow]:
    """Every dirty-tracking benchmark: `bitmap_rows` then `harvest_rows` (on `kernel`,
    which needs the iommufd selftest; default: a new simulated kernel)."""
    return bitmap_rows(pages, 2 * repeat, seconds, on_step) + harvest_rows(
        kernel, pages, repeat, seconds, on_step
    )


def _size(n: int) -> str:
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB")):
        if n >= unit:
            return f"{n // unit}{name}" if n % unit == 0 else f"{n / unit:.3g}{name}"
    return f"{n}B"
