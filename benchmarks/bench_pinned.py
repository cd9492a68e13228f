"""What pinning costs per map, side by side in one run (the simulator unless
FASTMAP_KERNEL=real): the same fixed-IOVA maps of 4 KiB, 2 MiB and 1 GiB pages, then
unmap_all, on an IOAS with a device attached (each map pins the pages, which the
simulator has the host kernel pin too, and writes IOPTEs) and on one without (each map
only records the area). Both are bare C++ loops of IOMMU_IOAS_MAP (the floor), so the
ratio is the pinning path's own cost.

    pytest benchmarks/bench_pinned.py --benchmark-enable   # timed; ratios in extra_info
    pytest benchmarks/bench_pinned.py                      # --benchmark-disable: a quick pass

`fastmap bench pinned` compares the ways of mapping with a domain attached.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from fastmap._tools import bench_pinned
from fastmap.ioas import Ioas
from fastmap.kernel import Kernel
from fastmap.seam import open_kernel

#: Maps per page size, timed and quick (the memory cycles over POOL_PAGES pages).
ENTRIES = {"4KiB": (20_000, 64), "2MiB": (400, 8), "1GiB": (8, 0)}


def _quick(request: pytest.FixtureRequest) -> bool:
    cfg = request.config
    return bool(cfg.getoption("benchmark_disable") and not cfg.getoption("benchmark_enable"))


@pytest.fixture(scope="module")
def attached() -> Iterator[Ioas]:
    kernel: Kernel = open_kernel()
    with bench_pinned.attached_ioas(kernel) as ioas:
        yield ioas


def _map_unmap(ioas: Ioas, vas: np.ndarray, lengths: np.ndarray, iovas: np.ndarray) -> float:
    """Seconds for the maps and their unmap_all (where the pins are released)."""
    t0 = time.perf_counter()
    bench_pinned._floor(ioas, vas, lengths, iovas)
    ioas.unmap_all()
    return time.perf_counter() - t0


@pytest.mark.parametrize("page", list(bench_pinned.PAGE_SIZES))
def test_pinning_cost(
    benchmark,  # type: ignore[no-untyped-def]
    request: pytest.FixtureRequest,
    attached: Ioas,
    page: str,
) -> None:
    size = bench_pinned.PAGE_SIZES[page]
    timed, quick = ENTRIES[page]
    n = quick if _quick(request) else timed
    if n == 0:
        pytest.skip("timed runs only (the quick pass does not touch 1 GiB of memory)")
    buf = bench_pinned.hugepage_buffer(size, min(bench_pinned.POOL_PAGES[page], n))
    plain = Ioas.allocate(attached.kernel, attached.iommufd)
    try:
        idx = np.arange(n, dtype=np.uint64)
        vas = np.uint64(buf.va) + (idx % np.uint64(buf.pages)) * np.uint64(size)
        lengths = np.full(n, size, dtype=np.uint64)
        iovas = np.uint64(bench_pinned._iova_base(attached, n * size, size)) + idx * np.uint64(size)
        benchmark.group = f"pinning {n:,} x {page} ({buf.backing}) on {attached.kernel.name}"
        seen: list[tuple[float, float]] = []

        def pair() -> None:  # unpinned first, so both see the same machine load
            plain_s = _map_unmap(plain, vas, lengths, iovas)
            seen.append((_map_unmap(attached, vas, lengths, iovas), plain_s))

        benchmark.pedantic(pair, rounds=3, iterations=1)
        pinned = min(p for p, _ in seen)
        unpinned = min(u for _, u in seen)
        benchmark.extra_info.update(
            {
                "backing": buf.backing,
                "pinned_us_per_map": pinned / n * 1e6,
                "unpinned_us_per_map": unpinned / n * 1e6,
                "pinned_vs_unpinned": pinned / unpinned,
            }
        )
        assert pinned > 0 and unpinned > 0
    finally:
        plain.close()
        buf.close()
