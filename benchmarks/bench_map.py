"""Map throughput, side by side on one kernel (the simulator unless FASTMAP_KERNEL=real):
the naive Python loop (a ctypes struct and one ioctl per map), Ioas.map per entry,
Ioas.map_batch serial and parallel, and the C++ floor (a bare loop of ioctls).

    pytest benchmarks/bench_map.py --benchmark-enable    # timed, groups per size
    pytest benchmarks/bench_map.py                       # --benchmark-disable: a quick pass

Targets (ratios within one run): batch >= 20x naive for 4 KiB maps, and within 1.2x of the
floor. `fastmap bench map` prints the same comparison as a table.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastmap import uapi
from fastmap._tools import bench_map
from fastmap.ioas import Ioas
from fastmap.kernel import Kernel
from fastmap.seam import open_kernel


def _quick(request: pytest.FixtureRequest) -> bool:
    cfg = request.config
    return bool(cfg.getoption("benchmark_disable") and not cfg.getoption("benchmark_enable"))


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    return open_kernel()


@pytest.fixture
def iommufd(kernel: Kernel) -> Iterator[int]:
    fd = kernel.open("/dev/iommu")
    yield fd
    kernel.close(fd)


@pytest.mark.parametrize("method", bench_map.METHODS)
@pytest.mark.parametrize("size", bench_map.SIZES, ids=[s[0] for s in bench_map.SIZES])
def test_map(
    benchmark,  # type: ignore[no-untyped-def]
    request: pytest.FixtureRequest,
    kernel: Kernel,
    iommufd: int,
    size: tuple[str, int, int],
    method: str,
) -> None:
    label, entries, length = size
    if _quick(request):
        entries = min(entries, 256)
    region, vas, lengths, iovas = bench_map._layout(entries, length)
    benchmark.group = f"map {label} on {kernel.name}"
    runner = bench_map._RUNNERS[method]
    ioases: list[Ioas] = []

    def setup():  # type: ignore[no-untyped-def]
        ioases.append(Ioas.allocate(kernel, iommufd))
        return (kernel, iommufd, ioases[-1], vas, lengths, iovas), {}

    benchmark.pedantic(runner, setup=setup, rounds=3, iterations=1)
    # Every way must have mapped the same thing: the kernel holds each entry's area.
    last = ioases[-1]
    for iova in iovas[:: max(1, entries // 16)].tolist():
        cmd = uapi.new(uapi.iommu_ioas_unmap, ioas_id=last.id, iova=iova, length=length)
        kernel.ioctl(iommufd, uapi.IOMMU_IOAS_UNMAP, cmd)
        assert cmd.length == length
    for io in ioases:
        io.close()
    region.close()


# --- whole operations (issue 10 item 4): deferred work included, each next to its floor ------
def test_whole_operations(
    benchmark,  # type: ignore[no-untyped-def]
    request: pytest.FixtureRequest,
    kernel: Kernel,
) -> None:
    """map + first translate vs the map floor, unmap_batch vs the unmap floor, bulk
    translation rate, and threads on separate IOASes: the ratios come from one run and go
    into the benchmark's extra_info. Targets at 100k x 4 KiB on the simulator: map <= 1.2x
    its floor, unmap_batch <= 1.2x its floor, translate_va_bulk >= 5 M lookups/s."""
    entries = 256 if _quick(request) else 100_000
    benchmark.group = f"whole operations {entries} x 4KiB on {kernel.name}"
    life = benchmark.pedantic(
        bench_map.run_lifecycle_benchmark, args=(kernel, entries), rounds=1, iterations=1
    )
    benchmark.extra_info.update(life.ratios)
    assert life.map_floor > 0 and life.unmap_floor > 0
