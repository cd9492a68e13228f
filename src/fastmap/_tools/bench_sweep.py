"""Map throughput against batch size, and `threads=N` (`fastmap bench batch`, `bench threads`).

Batch size: `entries` fixed-IOVA 4 KiB mappings made in calls of `b` entries each, for b
from 1 up to all of them, by ``Ioas.map_batch`` and by the C++ floor (``_core.map_loop``
called per chunk), beside the naive Python loop (one ioctl per entry: no batch at all).

Threads: ``map_batch(threads=N)`` into one IOAS, and N Python threads each mapping 1/N of
the entries into its own IOAS, against the same work done by one thread. With a domain
attached (`pinned=True`) the single-IOAS case pins as it maps.
"""

from __future__ import annotations

import mmap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from fastmap import _core
from fastmap._libc import MAP_NORESERVE as _MAP_NORESERVE
from fastmap._tools import bench_pinned
from fastmap._tools.bench_progress import quiet
from fastmap.ioas import Ioas
from fastmap.kernel import Kernel

__all__ = ["BATCH_SIZES", "SweepRow", "ThreadRow", "run_batch_sweep", "run_thread_benchmark"]

PAGE = 4096
BATCH_SIZES = (1, 8, 64, 512, 4096, 32768, 262144)
_PROT = bench_pinned._PROT


@dataclass(frozen=True)
class SweepRow:
    batch: int  # entries per call
    method: str  # "batch", "floor", "naive"
    entries: int
    seconds: float

    @property
    def maps_per_second(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class ThreadRow:
    target: str  # "one IOAS", "one IOAS, domain attached", "separate IOASes"
    threads: int
    entries: int
    seconds: float

    @property
    def maps_per_second(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else float("inf")


def _layout(entries: int) -> tuple[mmap.mmap, np.ndarray, np.ndarray, np.ndarray]:
    region = mmap.mmap(
        -1, entries * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
    )
    base = np.frombuffer(region, np.uint8, count=1).ctypes.data
    off = np.arange(entries, dtype=np.uint64) * np.uint64(PAGE)
    return region, np.uint64(base) + off, np.full(entries, PAGE, np.uint64), (1 << 32) + off


def _best(fn: Callable[[], float], repeat: int, seconds: float | None) -> float:
    times: list[float] = []
    for _ in range(repeat):
        times.append(fn())
        if seconds is not None and sum(times) >= seconds:
            break
    return min(times)


def run_batch_sweep(
    kernel: Kernel,
    entries: int = 100_000,
    repeat: int = 3,
    seconds: float | None = None,
    sizes: tuple[int, ...] = BATCH_SIZES,
    on_step: Callable[[str], object] = quiet,
) -> list[SweepRow]:
    """maps/s of `entries` 4 KiB maps (no domain) made in calls of each batch size."""
    region, vas, lengths, iovas = _layout(entries)
    fd = kernel.open("/dev/iommu")
    rows: list[SweepRow] = []
    try:

        def timed(method: str, b: int) -> float:
            with Ioas.allocate(kernel, fd) as io:
                t0 = time.perf_counter()
                for i in range(0, entries, b):
                    s = slice(i, i + b)
                    if method == "batch":
                        io.map_batch(vas[s], lengths[s], iovas[s])
                    else:
                        rc = _core.map_loop(
                            kernel.core, fd, io.id, vas[s], lengths[s], iovas[s], _PROT
                        )
                        if rc < 0:
                            raise OSError(-rc, "map_loop failed")
                return time.perf_counter() - t0

        def naive() -> float:
            with Ioas.allocate(kernel, fd) as io:
                t0 = time.perf_counter()
                bench_pinned._naive(io, vas, lengths, iovas)
                return time.perf_counter() - t0

        on_step(f"batch sweep: naive loop, {entries:,} entries")
        t_naive = _best(naive, repeat, seconds)
        for b in sorted({min(b, entries) for b in sizes}):
            rows.append(SweepRow(b, "naive", entries, t_naive))
            for method in ("batch", "floor"):
                on_step(f"batch sweep: {method}, {b:,} entries per call")
                rows.append(
                    SweepRow(b, method, entries, _best(partial(timed, method, b), repeat, seconds))
                )
    finally:
        kernel.close(fd)
        region.close()
    return rows


def run_thread_benchmark(
    kernel: Kernel,
    entries: int = 100_000,
    repeat: int = 3,
    seconds: float | None = None,
    thread_counts: tuple[int, ...] = (1, 2, 4),
    pinned: bool = True,
    on_step: Callable[[str], object] = quiet,
) -> list[ThreadRow]:
    """Best time of `entries` 4 KiB maps for each thread count, three ways (see module)."""
    region, vas, lengths, iovas = _layout(entries)
    fd = kernel.open("/dev/iommu")
    rows: list[ThreadRow] = []
    try:

        def one_ioas(n: int) -> float:
            with Ioas.allocate(kernel, fd) as io:
                t0 = time.perf_counter()
                io.map_batch(vas, lengths, iovas, threads=n)
                return time.perf_counter() - t0

        def separate(n: int) -> float:
            if n == 1:  # the baseline: one thread (the caller) doing all of it
                return one_ioas(1)
            ioases = [Ioas.allocate(kernel, fd) for _ in range(n)]
            try:
                parts = np.array_split(np.arange(entries), n)
                jobs = [
                    (io, vas[p], lengths[p], iovas[p]) for io, p in zip(ioases, parts, strict=True)
                ]
                pool = [
                    threading.Thread(target=io.map_batch, args=(v, ln, i)) for io, v, ln, i in jobs
                ]
                t0 = time.perf_counter()
                for t in pool:
                    t.start()
                for t in pool:
                    t.join()
                return time.perf_counter() - t0
            finally:
                for io in ioases:
                    io.close()

        for n in thread_counts:
            on_step(f"threads: one IOAS, threads={n}")
            rows.append(
                ThreadRow("one IOAS", n, entries, _best(partial(one_ioas, n), repeat, seconds))
            )
            on_step(f"threads: {n} separate IOASes")
            rows.append(
                ThreadRow(
                    "separate IOASes", n, entries, _best(partial(separate, n), repeat, seconds)
                )
            )
    finally:
        kernel.close(fd)
        region.close()
    if pinned:
        buf = bench_pinned.hugepage_buffer(PAGE, min(entries, 4096))
        try:
            idx = np.arange(entries, dtype=np.uint64)
            pvas = np.uint64(buf.va) + (idx % np.uint64(buf.pages)) * np.uint64(PAGE)
            with bench_pinned.attached_ioas(kernel) as io:

                def pinned_map(n: int) -> float:
                    t0 = time.perf_counter()
                    io.map_batch(pvas, lengths, iovas, threads=n)
                    dt = time.perf_counter() - t0
                    io.unmap_all()
                    return dt

                for n in thread_counts:
                    on_step(f"threads: one IOAS with a domain, threads={n}")
                    rows.append(
                        ThreadRow(
                            "one IOAS, domain attached",
                            n,
                            entries,
                            _best(partial(pinned_map, n), repeat, seconds),
                        )
                    )
        finally:
            buf.close()
    return rows
