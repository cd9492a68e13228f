"""fastmap.bench_dirty: its baselines agree with fastmap, and it returns sensible rows.

No timing is asserted (benchmarks/ times things); this only checks that the library behind
`fastmap bench dirty` works, on shrunk sizes.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastmap import bitmap
from fastmap._tools.bench_dirty import (
    BenchRow,
    MiB,
    MockDirtyBed,
    numpy_to_ranges,
    python_to_ranges,
    random_bitmap,
    run_dirty_benchmark,
)


@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 1.0])
@pytest.mark.parametrize("nbits", [0, 1, 64, 1000, 64 * 300 + 5])
def test_baselines_agree_with_to_ranges(density: float, nbits: int) -> None:
    bm = random_bitmap(nbits, density, seed=nbits)
    runs = bitmap.to_ranges(bm, nbits)
    np.testing.assert_array_equal(numpy_to_ranges(bm, nbits).reshape(-1, 2), runs)
    assert python_to_ranges(bm, nbits) == [tuple(r) for r in runs.tolist()]


def test_random_bitmap_density() -> None:
    nbits = 1 << 20
    bm = random_bitmap(nbits, 0.1, seed=3)
    assert 0.09 < bitmap.popcount(bm, nbits) / nbits < 0.11
    assert bitmap.popcount(random_bitmap(100, 1.0), 100) == 100
    assert int(random_bitmap(100, 1.0)[-1]) == (1 << 36) - 1  # nothing past nbits


def test_mock_bed_marks_whole_pages() -> None:
    with MockDirtyBed(count=2, window=4 * MiB) as bed:
        marks = bed.marks(0.25, seed=1)
        pages = bitmap.popcount(random_bitmap(1024, 0.25, seed=1))
        assert bed.mark(marks) == 2 * 2 * pages  # two HWPTs, two 2 KiB IOPTEs per page
        h, outs = bed.harvester()
        harvests = bed.harvest_all(h, outs)
        assert [x.dirty_pages() for x in harvests] == [pages, pages]
        assert [x.dirty_pages() for x in bed.harvest_all(h, outs)] == [0, 0]


def test_run_dirty_benchmark_quick_rows() -> None:
    rows = run_dirty_benchmark(repeat=2, pages=1 << 14)
    assert all(isinstance(r, BenchRow) for r in rows)
    groups = {r.group for r in rows}
    assert len(groups) == 4
    assert all(r.seconds > 0 and r.median >= r.seconds and r.gib_per_s > 0 for r in rows)
    names = [r.name for r in rows]
    assert names.count("fastmap.bitmap.to_ranges") == 2
    assert any(n.startswith("numpy") for n in names)
    assert any(n.startswith("Python loop") for n in names)
    assert sum("dirty" in n for n in names) >= 3
