"""Differential runs: the same seeded raw-uAPI sequence on the real kernel and on the sim.

Only inside the VM (it needs /dev/iommu). The simulator is configured as the real kernel's
version, every call's outcome (output fields or errno) is recorded, and the two traces must
be identical: same object ids, same automatic IOVAs, same errnos, same unmapped lengths,
same IOVA ranges, same dirty bitmaps. The first difference is reported with its context.
"""

from __future__ import annotations

import ctypes
import random
from collections.abc import Callable

import pytest

from fastmap import uapi
from fastmap.errors import KernelError
from fastmap.kernel import Fd, Kernel

from ..conftest import make_kernel
from .helpers import (
    MOCK_PAGE_SIZE,
    PAGE_SIZE,
    U64_MAX,
    Buffer,
    add_reserved,
    allow_iovas,
    destroy,
    get_dirty_bitmap,
    hwpt_alloc,
    ioas_alloc,
    ioas_copy,
    ioas_map,
    ioas_unmap,
    iova_ranges,
    mock_domain,
    mock_set_dirty,
    set_dirty_tracking,
)

P = PAGE_SIZE
SEEDS = [1, 2, 3]
Trace = list[tuple[str, object]]


class Recorder:
    """Runs calls on one kernel's /dev/iommu and records what each returned or raised."""

    def __init__(self, fd: Fd) -> None:
        self.fd = fd
        self.trace: Trace = []

    def __call__(self, what: str, fn: Callable[..., object], *args: object) -> object:
        try:
            out = fn(self.fd, *args)
        except KernelError as e:
            self.trace.append((what, e.errno_name))
            return None
        self.trace.append((what, out))
        return out


Scenario = Callable[[Recorder, random.Random, Buffer], None]


def ids_scenario(r: Recorder, rng: random.Random, buf: Buffer) -> None:
    ids = [r("alloc", ioas_alloc) for _ in range(5)]
    r("destroy", destroy, ids[1])
    r("destroy", destroy, ids[3])
    r("destroy0", destroy, 0)
    r("alloc", ioas_alloc)
    r("alloc", ioas_alloc)
    r("alloc", ioas_alloc)


def _random_ops(
    r: Recorder,
    rng: random.Random,
    ioas: int,
    va_of: Callable[[int], int],
    granule: int,
    window: int,
    n: int,
) -> None:
    mapped: list[tuple[int, int]] = []
    for _ in range(n):
        op = rng.random()
        length = granule * rng.choice([1, 1, 2, 3, 4, 7, 8, 16, 33]) + (
            0 if granule > 1 or rng.random() < 0.5 else rng.randrange(1, 4096)
        )
        if op < 0.45:
            iova = r("map", ioas_map, ioas, va_of(length), length)
            if isinstance(iova, int):
                mapped.append((iova, length))
        elif op < 0.6:
            start = rng.randrange(0, window, granule)
            if isinstance(r("map_fixed", ioas_map, ioas, va_of(length), length, start), int):
                mapped.append((start, length))
        elif op < 0.8 and mapped:
            iova, length = mapped.pop(rng.randrange(len(mapped)))
            r("unmap", ioas_unmap, ioas, iova, length)
        elif op < 0.9:
            start = rng.randrange(0, window, granule)
            span = max(granule, P) * rng.randrange(1, 64)
            r("unmap_range", ioas_unmap, ioas, start, span)
            mapped = [m for m in mapped if not (start <= m[0] and m[0] + m[1] <= start + span)]
        elif mapped:
            src, length = rng.choice(mapped)
            iova = r("copy", ioas_copy, ioas, ioas, src, length)
            if isinstance(iova, int):
                mapped.append((iova, length))
    r("ranges", iova_ranges, ioas)
    r("unmap_all", ioas_unmap, ioas, 0, U64_MAX)


def no_domain_scenario(r: Recorder, rng: random.Random, buf: Buffer) -> None:
    # With no domain nothing is pinned: any VA works, only its alignment steers the choice.
    ioas = r("alloc", ioas_alloc)
    assert isinstance(ioas, int)
    base = 0x7F0000000000

    def va_of(length: int) -> int:
        return base + rng.choice([0, P, 2 * P, 16 * P, 1 << 21, 0x123]) + rng.randrange(64) * P

    _random_ops(r, rng, ioas, va_of, 1, 1 << 20, 150)


def allowed_scenario(r: Recorder, rng: random.Random, buf: Buffer) -> None:
    ioas = r("alloc", ioas_alloc)
    assert isinstance(ioas, int)
    r("reserve", add_reserved, ioas, 64 * P, 16 * P)
    r("allow_bad", allow_iovas, ioas, [(0, 128 * P)])
    r("allow", allow_iovas, ioas, [(P, 60 * P - 1), (100 * P, 400 * P - 1)])
    for _ in range(40):
        length = P * rng.randrange(1, 40)
        r("map", ioas_map, ioas, buf.addr + P * rng.randrange(4), length)
    r("ranges", iova_ranges, ioas)


def mock_domain_scenario(r: Recorder, rng: random.Random, buf: Buffer) -> None:
    ioas = r("alloc", ioas_alloc)
    assert isinstance(ioas, int)
    r("mock", mock_domain, ioas)
    r("ranges", iova_ranges, ioas)

    def va_of(length: int) -> int:
        return (
            buf.addr
            + MOCK_PAGE_SIZE * rng.randrange(0, (buf.length - length) // MOCK_PAGE_SIZE + 1)
            if length <= buf.length
            else buf.addr
        )

    _random_ops(r, rng, ioas, va_of, MOCK_PAGE_SIZE, 1 << 25, 120)


def dirty_scenario(r: Recorder, rng: random.Random, buf: Buffer) -> None:
    iova, length = uapi.MOCK_APERTURE_START, buf.length
    ioas = r("alloc", ioas_alloc)
    assert isinstance(ioas, int)
    r("map", ioas_map, ioas, buf.addr, length, iova)
    dev = r("mock", mock_domain, ioas)
    assert isinstance(dev, tuple)
    hwpt = r("hwpt", hwpt_alloc, dev[2], ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    r("mock2", mock_domain, hwpt)
    r("track", set_dirty_tracking, hwpt, True)
    nbits = length // MOCK_PAGE_SIZE
    marks = (ctypes.c_uint8 * (nbits // 8))()
    out = (ctypes.c_uint8 * (nbits // 8 + 16))()
    for _ in range(12):
        for i in range(len(marks)):
            marks[i] = rng.getrandbits(8) if rng.random() < 0.2 else 0
        r("mark", mock_set_dirty, hwpt, iova, length, MOCK_PAGE_SIZE, ctypes.addressof(marks))
        page = rng.choice([MOCK_PAGE_SIZE, P, 4 * P])
        first = rng.randrange(0, length // page)
        span = rng.randrange(1, length // page - first + 1) * page
        ctypes.memset(out, 0, len(out))
        flags = rng.choice([0, uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR])
        r(
            "read",
            get_dirty_bitmap,
            hwpt,
            iova + first * page,
            span,
            page,
            ctypes.addressof(out),
            flags,
        )
        r("bits", lambda fd: bytes(out))


SCENARIOS: dict[str, Scenario] = {
    "ids": ids_scenario,
    "no_domain": no_domain_scenario,
    "allowed": allowed_scenario,
    "mock_domain": mock_domain_scenario,
    "dirty": dirty_scenario,
}


def run(kernel: Kernel, scenario: Scenario, seed: int) -> Trace:
    with kernel.open_fd("/dev/iommu") as fd, Buffer(64 * P, align=1 << 21) as buf:
        rec = Recorder(fd)
        scenario(rec, random.Random(seed), buf)
        return rec.trace


@pytest.mark.real_kernel
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_sim_matches_real(name: str, seed: int) -> None:
    real = make_kernel("real")
    from fastmap.sim import SimKernel

    sim = SimKernel(kernel_version=real.version)
    want = run(real, SCENARIOS[name], seed)
    got = run(sim, SCENARIOS[name], seed)
    for i, (w, g) in enumerate(zip(want, got, strict=False)):
        if w != g:
            context = "\n".join(f"  {j}: {want[j]}" for j in range(max(0, i - 5), i))
            pytest.fail(f"step {i}: real {w!r} but sim {g!r}; before it:\n{context}")
    assert len(want) == len(got)
