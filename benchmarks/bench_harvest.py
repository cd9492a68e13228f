"""DirtyHarvester throughput on the simulated kernel (iommufd selftest mock domain).

    pytest benchmarks/bench_harvest.py --benchmark-enable     # timed
    pytest benchmarks/bench_harvest.py                        # --benchmark-disable: one quick pass

Harvests at 4 KiB pages (the mock's IOPTEs are 2 KiB) after marking 1 %, 10 % or 100 % of
the pages dirty (each round re-marks, untimed, because a harvest clears the dirty bits), and
1 TiB of tracked guest memory at 1 % dirty (goal < 100 ms): 1024 IOASes of 1 GiB, since the
mock's aperture is under 2 GiB. extra_info["GiB_per_s"] is guest memory per second.
With benchmarks disabled the windows are 64 MiB and there are 16 of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from fastmap._tools.bench_dirty import GiB, MiB, MockDirtyBed

PAGE = 4096


def _quick(request: pytest.FixtureRequest) -> bool:
    """Benchmarks are off (pyproject's addopts has --benchmark-disable unless overridden)."""
    cfg = request.config
    return bool(cfg.getoption("benchmark_disable") and not cfg.getoption("benchmark_enable"))


@pytest.fixture(scope="module")
def one_window(request: pytest.FixtureRequest) -> Iterator[MockDirtyBed]:
    with MockDirtyBed(window=64 * MiB if _quick(request) else GiB) as bed:
        yield bed


@pytest.fixture(scope="module")
def terabyte(request: pytest.FixtureRequest) -> Iterator[MockDirtyBed]:
    quick = _quick(request)
    with MockDirtyBed(count=16 if quick else 1024, window=64 * MiB if quick else GiB) as bed:
        yield bed


def _run(benchmark: Any, bed: MockDirtyBed, density: float, group: str, rounds: int) -> None:
    harvester, outs = bed.harvester()
    marks = bed.marks(density)
    expected = int(np.bitwise_count(marks).sum()) // 2  # 2 IOPTEs per 4 KiB page

    def setup() -> None:
        bed.mark(marks)

    benchmark.group = group
    harvests = benchmark.pedantic(
        bed.harvest_all, args=(harvester, outs), setup=setup, rounds=rounds
    )
    assert [h.dirty_pages() for h in harvests] == [expected] * len(bed.hwpts)
    benchmark.extra_info["guest_GiB"] = bed.guest_bytes / GiB
    if benchmark.stats is not None:
        benchmark.extra_info["GiB_per_s"] = bed.guest_bytes / GiB / benchmark.stats.stats.min


@pytest.mark.parametrize("density", [0.01, 0.10, 1.00], ids=["1%", "10%", "100%"])
def test_harvest_throughput(benchmark: Any, one_window: MockDirtyBed, density: float) -> None:
    group = f"harvest {one_window.window // MiB} MiB @4K (sim mock HWPT)"
    _run(benchmark, one_window, density, group, rounds=20)


def test_harvest_1tib_1pct(benchmark: Any, terabyte: MockDirtyBed) -> None:
    group = f"harvest {terabyte.guest_bytes // GiB} GiB @4K, 1% dirty"
    benchmark.extra_info["target_ms"] = 100
    _run(benchmark, terabyte, 0.01, group, rounds=5)
