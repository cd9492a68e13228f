"""Allocator throughput: alloc+free pairs per second with 1k / 100k / 1M live ranges.

One group per live count compares fastmap through the batch API and through single calls,
the pure-Python reference model of the tests, and PyPI's intervaltree doing the same
first-fit. Each round runs a fixed number of steps (free a random live range, first-fit
allocate a new one); `extra_info` carries the pairs per round and the resulting rate.

    PYTHONPATH=src python -m pytest benchmarks/bench_allocator.py --benchmark-enable
    PYTHONPATH=src python -m pytest benchmarks/bench_allocator.py     # --benchmark-disable:
                                                                      # small and quick

With --benchmark-disable (the project default) each backend still runs, on 1,000 live
ranges and a few steps, so the code paths are exercised without the minutes of setup the
large baselines need (intervaltree takes ~20 s to build 1M intervals); only the 1,000-live
cases are generated then, so every id names the size it runs.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fastmap._tools.bench_alloc import (
    AllocBackend,
    FastmapBatch,
    FastmapSingle,
    IntervalTreeFirstFit,
    ReferenceModel,
    Workload,
)

BACKENDS: dict[str, Callable[[], AllocBackend]] = {
    "fastmap-batch": FastmapBatch,
    "fastmap-single": FastmapSingle,
    "reference": ReferenceModel,
    "intervaltree": IntervalTreeFirstFit,
}

# Steps per round: enough for a stable time, few enough for the linear-time baselines.
STEPS: dict[str, dict[int, int]] = {
    "fastmap-batch": {1_000: 65_536, 100_000: 65_536, 1_000_000: 32_768},
    "fastmap-single": {1_000: 20_000, 100_000: 20_000, 1_000_000: 10_000},
    "reference": {1_000: 1_000, 100_000: 20, 1_000_000: 3},
    "intervaltree": {1_000: 500, 100_000: 20, 1_000_000: 3},
}
ROUNDS = {"fastmap-batch": 5, "fastmap-single": 5, "reference": 3, "intervaltree": 3}
LIVE = [1_000, 100_000, 1_000_000]
SMOKE_LIVE = 1_000  # the one size run with timing off


RATES: dict[tuple[int, str], float] = {}


class RateTable:
    """Rounds hold different numbers of pairs per backend, so pytest-benchmark's per-round
    times do not compare across rows; this adds pairs per second side by side to the end
    of the run (a plugin hook, so output capture does not swallow it)."""

    def pytest_terminal_summary(self, terminalreporter) -> None:  # type: ignore[no-untyped-def]
        if not RATES:
            return
        tr = terminalreporter
        tr.section("alloc+free pairs per second (best round; x = speed-up over the reference)")
        tr.write_line(f"{'live ranges':>12} " + " ".join(f"{name:>22}" for name in BACKENDS))
        for live in LIVE:
            ref = RATES.get((live, "reference"))
            cells = []
            for name in BACKENDS:
                rate = RATES.get((live, name))
                if rate is None:
                    cells.append(f"{'-':>22}")
                    continue
                x = f" ({rate / ref:,.{0 if rate >= 10 * ref else 2}f}x)" if ref else ""
                cells.append(f"{f'{rate:,.0f}{x}':>22}")
            tr.write_line(f"{live:>12,} " + " ".join(cells))


@pytest.fixture(scope="module", autouse=True)
def rate_table(request):  # type: ignore[no-untyped-def]
    pm = request.config.pluginmanager
    if not pm.has_plugin("fastmap-alloc-rates"):
        pm.register(RateTable(), "fastmap-alloc-rates")


def _timing_on(config: pytest.Config) -> bool:
    """pytest-benchmark's own rule for --benchmark-disable / --benchmark-enable."""
    return not (config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.name == "test_alloc_free":
        sizes = LIVE if _timing_on(metafunc.config) else [SMOKE_LIVE]
        metafunc.parametrize("live", sizes, ids=lambda n: f"{n:,}live")


@pytest.mark.parametrize("impl", list(BACKENDS))
def test_alloc_free(benchmark, impl: str, live: int) -> None:  # type: ignore[no-untyped-def]
    if benchmark.disabled:
        steps, rounds = 64, 1
    else:
        steps, rounds = STEPS[impl][live], ROUNDS[impl]
    if impl == "intervaltree":
        pytest.importorskip("intervaltree")
    benchmark.group = f"alloc+free pairs, {live:,} live ranges"
    backend = BACKENDS[impl]()
    w = Workload(live)
    backend.prefill(w)

    def setup():  # type: ignore[no-untyped-def]
        return w.steps(steps), {}

    benchmark.pedantic(backend.run, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info["pairs_per_round"] = steps
    if not benchmark.disabled:
        rate = steps / benchmark.stats.stats.min
        benchmark.extra_info["pairs_per_second"] = round(rate)
        RATES[(live, impl)] = rate
