"""fastmap.bench_alloc: its rows, and that every backend really does the same first-fit."""

from __future__ import annotations

import numpy as np
import pytest

from fastmap._tools.bench_alloc import (
    AllocBenchRow,
    FastmapBatch,
    FastmapSingle,
    IntervalTreeFirstFit,
    Workload,
    measure_alloc,
)


def test_measure_alloc_rows() -> None:
    rows = measure_alloc((50, 300), backends=[FastmapBatch, FastmapSingle], pairs=500)
    assert [(r.impl, r.live) for r in rows] == [
        ("fastmap (batch)", 50),
        ("fastmap (single calls)", 50),
        ("fastmap (batch)", 300),
        ("fastmap (single calls)", 300),
    ]
    for r in rows:
        assert isinstance(r, AllocBenchRow)
        assert r.pairs == 500 and r.seconds > 0 and r.cpu_seconds >= 0
        assert r.pairs_per_second > 0


def test_time_budget_stops_early() -> None:
    (row,) = measure_alloc((100,), backends=[FastmapSingle], pairs=10**9, max_seconds=0.05)
    assert 0 < row.pairs < 10**9


def test_single_step_backends_agree() -> None:
    """fastmap single calls and intervaltree's boundary walk make the same first-fit
    choices, step for step, so the comparison is like for like."""
    pytest.importorskip("intervaltree")
    live = 400
    a, b = FastmapSingle(), IntervalTreeFirstFit()
    wa, wb = Workload(live, seed=5), Workload(live, seed=5)
    a.prefill(wa)
    b.prefill(wb)
    assert a.live == b.live
    for _ in range(5):
        sa, la = wa.steps(300)
        sb, lb = wb.steps(300)
        assert np.array_equal(sa, sb) and np.array_equal(la, lb)
        a.run(sa, la)
        b.run(sb, lb)
        assert a.live == b.live
    # The batch backend keeps its allocator consistent through many batches.
    c = FastmapBatch()
    wc = Workload(live, seed=5)
    c.prefill(wc)
    for _ in range(5):
        c.run(*wc.steps(1000))
    assert c.a.check_invariants() and len(c.a) == live
