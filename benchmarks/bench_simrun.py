"""What `fastmap sim-run` adds per ioctl (see fastmap.bench_simrun): one measured run of
the C program per path, its ns/call in extra_info, next to the direct library call."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fastmap._tools.bench_simrun import MODES, build, measure

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("simrun-bench"))


@pytest.mark.benchmark(group="simrun-ioctl")
@pytest.mark.parametrize("mode", MODES)
def test_ioctl_path(benchmark, exe: Path, mode: str) -> None:  # type: ignore[no-untyped-def]
    calls = 2_000 if mode == "child" else 20_000
    row = benchmark.pedantic(measure, args=(exe, mode, calls), rounds=1, iterations=1)
    benchmark.extra_info["ns_per_call"] = row.ns_per_call
    assert row.ns_per_call > 0
