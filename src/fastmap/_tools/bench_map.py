"""Map throughput, measured side by side on one kernel (`fastmap bench map`).

For each size it times the same set of fixed-IOVA mappings made five ways:

- ``naive``: what a Python user writes by hand: a ctypes struct and one ioctl per map
  (through fastmap.kernel.Kernel.ioctl: fcntl-style raw access, on either kernel);
- ``single``: fastmap's one-mapping API, ``Ioas.map``, once per entry;
- ``batch``: ``Ioas.map_batch``, one Python call for the whole batch;
- ``batch-parallel``: the same with ``threads=N``;
- ``floor``: a bare C++ loop of ioctls through the seam (no bookkeeping, no Python).

The IOAS has no device attached, so the kernel only records areas (no pinning): what is
measured is fastmap's overhead plus the cost of the call itself. Rows carry maps/s and the
ratios the targets are stated in (batch vs naive, batch vs floor).
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastmap import _core, uapi
from fastmap._libc import MAP_NORESERVE as _MAP_NORESERVE
from fastmap._tools.bench_progress import quiet
from fastmap.ioas import Ioas
from fastmap.kernel import Kernel

#: (label, entries, bytes per entry): the sizes the targets are stated for.
SIZES: tuple[tuple[str, int, int], ...] = (
    ("100k x 4KiB", 100_000, 4 << 10),
    ("10k x 2MiB", 10_000, 2 << 20),
    ("8 x 1GiB", 8, 1 << 30),
)
METHODS = ("naive", "single", "batch", "batch-parallel", "floor")


@dataclass(frozen=True)
class MapRow:
    size: str
    method: str
    entries: int
    seconds: float

    @property
    def maps_per_second(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else float("inf")


def _layout(entries: int, length: int) -> tuple[mmap.mmap, np.ndarray, np.ndarray, np.ndarray]:
    # Distinct VAs inside one untouched reservation; IOVAs laid out densely from 4 GiB.
    span = entries * length
    region = mmap.mmap(-1, span, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
    base = np.frombuffer(region, np.uint8, count=1).ctypes.data
    offsets = np.arange(entries, dtype=np.uint64) * np.uint64(length)
    vas = np.uint64(base) + offsets
    iovas = np.uint64(1 << 32) + offsets
    lengths = np.full(entries, length, dtype=np.uint64)
    return region, vas, lengths, iovas


_PROT = uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE


def _naive(
    kernel: Kernel, fd: int, ioas: Ioas, vas: np.ndarray, lengths: np.ndarray, iovas: np.ndarray
) -> None:
    for va, length, iova in zip(vas.tolist(), lengths.tolist(), iovas.tolist(), strict=True):
        cmd = uapi.iommu_ioas_map(
            size=40,
            flags=_PROT | uapi.IOMMU_IOAS_MAP_FIXED_IOVA,
            ioas_id=ioas.id,
            user_va=va,
            length=length,
            iova=iova,
        )
        kernel.ioctl(fd, uapi.IOMMU_IOAS_MAP, cmd)


def _single(
    kernel: Kernel, fd: int, ioas: Ioas, vas: np.ndarray, lengths: np.ndarray, iovas: np.ndarray
) -> None:
    for va, length, iova in zip(vas.tolist(), lengths.tolist(), iovas.tolist(), strict=True):
        ioas.map(va, length, iova)


def _batch(
    kernel: Kernel, fd: int, ioas: Ioas, vas: np.ndarray, lengths: np.ndarray, iovas: np.ndarray
) -> None:
    ioas.map_batch(vas, lengths, iovas)


def _batch_parallel(
    kernel: Kernel, fd: int, ioas: Ioas, vas: np.ndarray, lengths: np.ndarray, iovas: np.ndarray
) -> None:
    ioas.map_batch(vas, lengths, iovas, threads=_THREADS)


def _floor(
    kernel: Kernel, fd: int, ioas: Ioas, vas: np.ndarray, lengths: np.ndarray, iovas: np.ndarray
) -> None:
    rc = _core.map_loop(kernel.core, fd, ioas.id, vas, lengths, iovas, _PROT)
    if rc < 0:
        raise OSError(-rc, "map_loop failed")


_THREADS = 2
_RUNNERS: dict[str, Callable[[Kernel, int, Ioas, np.ndarray, np.ndarray, np.ndarray], None]] = {
    "naive": _naive,
    "single": _single,
    "batch": _batch,
    "batch-parallel": _batch_parallel,
    "floor": _floor,
}


def run_map_benchmark(
    kernel: Kernel,
    sizes: tuple[tuple[str, int, int], ...] = SIZES,
    methods: tuple[str, ...] = METHODS,
    repeat: int = 3,
    entries: int | None = None,
    seconds: float | None = None,
    on_step: Callable[[str], object] = quiet,
) -> list[MapRow]:
    """Best-of-`repeat` time to map each size each way, on `kernel`. `entries` replaces
    each size's entry count; no new round of a size starts once its rounds have used
    `seconds`. The methods of one size run interleaved, so machine noise hits them alike."""
    rows: list[MapRow] = []
    fd = kernel.open("/dev/iommu")
    try:
        for label, default_entries, length in sizes:
            n = default_entries if entries is None else entries
            region, vas, lengths, iovas = _layout(n, length)
            best = {m: float("inf") for m in methods}
            spent = 0.0
            for r in range(repeat):
                for method in methods:
                    on_step(f"map {label}: {method}, round {r + 1}/{repeat}")
                    with Ioas.allocate(kernel, fd) as ioas:
                        t0 = time.perf_counter()
                        _RUNNERS[method](kernel, fd, ioas, vas, lengths, iovas)
                        dt = time.perf_counter() - t0
                        best[method] = min(best[method], dt)
                        spent += dt
                        # Mappings made outside the engine are removed by unmap-all on close.
                if seconds is not None and spent >= seconds:
                    break
            rows += [MapRow(label, m, n, best[m]) for m in methods]
            del vas
            region.close()
    finally:
        kernel.close(fd)
    return rows


def ratios(rows: list[MapRow]) -> dict[str, dict[str, float]]:
    """Per size: batch speed-up over naive, and batch time over the floor's."""
    out: dict[str, dict[str, float]] = {}
    for size in dict.fromkeys(r.size for r in rows):
        t = {r.method: r.seconds for r in rows if r.size == size}
        entry: dict[str, float] = {}
        if "batch" in t and "naive" in t:
            entry["batch_vs_naive"] = t["naive"] / t["batch"]
        if "batch" in t and "floor" in t:
            entry["batch_over_floor"] = t["batch"] / t["floor"]
        if "batch-parallel" in t and "floor" in t:
            entry["parallel_over_floor"] = t["batch-parallel"] / t["floor"]
        out[size] = entry
    return out


# --- whole operations: map with its index, unmap, translate ---------------------------------
@dataclass(frozen=True)
class Lifecycle:
    """Best-of-repeat seconds for `entries` fixed-IOVA maps of `length` bytes, each fastmap
    operation timed whole (deferred work included) next to the C++ floor on the same seam."""

    entries: int
    length: int
    map_floor: float  # _core.map_loop: a bare loop of IOMMU_IOAS_MAP
    map_indexed: float  # Ioas.map_batch, then the first translate_va (any deferred index work)
    unmap_floor: float  # _core.unmap_loop: a bare loop of IOMMU_IOAS_UNMAP
    unmap_batch: float  # Ioas.unmap_batch of everything map_batch made
    translate_bulk: float  # Ioas.translate_va_bulk of every entry's VA (index built)
    threads: int
    separate_serial: float  # `threads` IOASes, each mapping entries/threads, one at a time
    separate_parallel: float  # the same from `threads` Python threads at once

    @property
    def ratios(self) -> dict[str, float]:
        return {
            "map_indexed_over_floor": self.map_indexed / self.map_floor,
            "unmap_batch_over_floor": self.unmap_batch / self.unmap_floor,
            "translate_lookups_per_s": self.entries / self.translate_bulk,
            "separate_ioases_speedup": self.separate_serial / self.separate_parallel,
        }


def run_lifecycle_benchmark(
    kernel: Kernel,
    entries: int = 100_000,
    length: int = 4 << 10,
    repeat: int = 3,
    threads: int = 2,
    seconds: float | None = None,
    on_step: Callable[[str], object] = quiet,
) -> Lifecycle:
    """Time each whole operation against its floor, interleaved within each round."""
    import threading

    region, vas, lengths, iovas = _layout(entries, length)
    fd = kernel.open("/dev/iommu")
    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    def separate(parallel: bool) -> float:
        ioases = [Ioas.allocate(kernel, fd) for _ in range(threads)]
        parts = np.array_split(np.arange(entries), threads)
        jobs = [(io, vas[p], lengths[p], iovas[p]) for io, p in zip(ioases, parts, strict=True)]
        t0 = time.perf_counter()
        if parallel:
            pool = [threading.Thread(target=io.map_batch, args=(v, n, i)) for io, v, n, i in jobs]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
        else:
            for io, v, n, i in jobs:
                io.map_batch(v, n, i)
        dt = time.perf_counter() - t0
        for io in ioases:
            io.close()
        return dt

    try:
        t_start = time.perf_counter()
        for r in range(repeat):
            if r and seconds is not None and time.perf_counter() - t_start >= seconds:
                break
            on_step(f"map: whole operations, {entries:,} entries, round {r + 1}/{repeat}")
            with Ioas.allocate(kernel, fd) as io:
                t0 = time.perf_counter()
                rc = _core.map_loop(kernel.core, fd, io.id, vas, lengths, iovas, _PROT)
                keep("map_floor", time.perf_counter() - t0)
                t0 = time.perf_counter()
                rc = rc or _core.unmap_loop(kernel.core, fd, io.id, iovas, lengths)
                keep("unmap_floor", time.perf_counter() - t0)
                if rc < 0:
                    raise OSError(-rc, "map_loop/unmap_loop failed")
            with Ioas.allocate(kernel, fd) as io:
                t0 = time.perf_counter()
                io.map_batch(vas, lengths, iovas)
                io.translate_va(int(vas[0]))
                keep("map_indexed", time.perf_counter() - t0)
                t0 = time.perf_counter()
                got, found = io.translate_va_bulk(vas)
                keep("translate_bulk", time.perf_counter() - t0)
                if not found.all() or not (got == iovas).all():
                    raise AssertionError("translate_va_bulk disagrees with the map")
                t0 = time.perf_counter()
                io.unmap_batch(iovas, lengths)
                keep("unmap_batch", time.perf_counter() - t0)
            keep("separate_serial", separate(False))
            keep("separate_parallel", separate(True))
    finally:
        kernel.close(fd)
        region.close()
    return Lifecycle(entries=entries, length=length, threads=threads, **best)
