"""Dirty bitmap -> runs of dirty pages: fastmap vs numpy, a Python loop and count_floor.

    pytest benchmarks/bench_bitmap.py --benchmark-enable      # timed
    pytest benchmarks/bench_bitmap.py                         # --benchmark-disable: one quick pass

Cases (fastmap._tools.bench_dirty.BITMAP_CASES): 64 GiB of guest memory at 4 KiB with 10 % of the
pages dirty at random (goal < 12 ms) and 512 GiB all dirty (goal < 4.6 ms); to_ranges
should stay within 2x of count_floor, a single popcount pass over the same bitmap. With
benchmarks disabled the bitmaps are 1/64 of that size so that the file runs in seconds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from fastmap import bitmap
from fastmap._tools.bench_dirty import (
    BITMAP_CASES,
    BitmapCase,
    numpy_to_ranges,
    python_to_ranges,
    random_bitmap,
)


def _quick(request: pytest.FixtureRequest) -> bool:
    """Benchmarks are off (pyproject's addopts has --benchmark-disable unless overridden)."""
    cfg = request.config
    return bool(cfg.getoption("benchmark_disable") and not cfg.getoption("benchmark_enable"))


@dataclasses.dataclass
class Loaded:
    case: BitmapCase
    bm: np.ndarray
    runs: np.ndarray  # fastmap's answer, checked once against numpy


@pytest.fixture(scope="module", params=BITMAP_CASES, ids=lambda c: c.group.replace(" ", "_"))
def loaded(request: pytest.FixtureRequest) -> Loaded:
    case: BitmapCase = request.param
    if _quick(request):
        case = dataclasses.replace(case, guest_bytes=case.guest_bytes // 64, python_shrink=4)
    bm = random_bitmap(case.nbits, case.density)
    runs = bitmap.to_ranges(bm, case.nbits)
    np.testing.assert_array_equal(runs, numpy_to_ranges(bm, case.nbits))
    return Loaded(case, bm, runs)


def _label(benchmark: Any, loaded: Loaded) -> None:
    benchmark.group = loaded.case.group
    benchmark.extra_info["guest_GiB"] = loaded.case.guest_bytes / 2**30
    benchmark.extra_info["target_ms"] = loaded.case.target * 1e3
    benchmark.extra_info["runs"] = len(loaded.runs)


def test_fastmap_to_ranges(benchmark: Any, loaded: Loaded) -> None:
    _label(benchmark, loaded)
    runs = benchmark(bitmap.to_ranges, loaded.bm, loaded.case.nbits)
    assert runs.shape == loaded.runs.shape


def test_count_floor(benchmark: Any, loaded: Loaded) -> None:
    _label(benchmark, loaded)
    total = benchmark(bitmap.count_floor, loaded.bm)
    assert total == int(loaded.runs[:, 1].sum())


def test_numpy_baseline(benchmark: Any, loaded: Loaded) -> None:
    _label(benchmark, loaded)
    runs = benchmark.pedantic(numpy_to_ranges, args=(loaded.bm, loaded.case.nbits), rounds=3)
    assert runs.shape == loaded.runs.shape


def test_python_loop_baseline(benchmark: Any, loaded: Loaded) -> None:
    """Timed on 1/python_shrink of the bitmap; extra_info has the time scaled up."""
    _label(benchmark, loaded)
    k = loaded.case.python_shrink
    nbits = loaded.case.nbits // k
    small = loaded.bm[: bitmap.words_for(nbits)]
    benchmark.extra_info["timed_fraction"] = f"1/{k}"
    runs = benchmark.pedantic(python_to_ranges, args=(small, nbits), rounds=1)
    if benchmark.stats is not None:
        benchmark.extra_info["scaled_s"] = benchmark.stats.stats.min * k
    assert runs == [tuple(r) for r in bitmap.to_ranges(small, nbits).tolist()]
