"""Differential fuzzing with hypothesis: random raw-uAPI operation sequences, replayed on the
real kernel and on the simulator (configured as the same kernel version), must produce the
same trace: every return value, object id, chosen IOVA, errno, unmapped length, IOVA range
list and dirty bitmap. Hypothesis is derandomized (reproducible in CI) and shrinks a
disagreement to a minimal sequence, which then becomes a regression test and a sim fix.

Runs only where /dev/iommu exists (inside the VM tier).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmap import uapi
from fastmap.errors import KernelError
from fastmap.kernel import Fd, Kernel
from tests.fuzzing import examples

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
BUF_PAGES = 64
# Slots name objects created earlier in the sequence (ids are compared, not assumed).
SLOTS = 4

lengths = st.one_of(
    st.sampled_from([P, 2 * P, 3 * P, 16 * P, 1 << 21, MOCK_PAGE_SIZE]),
    st.integers(1, 3 * P),
)
iovas = st.one_of(
    st.sampled_from([0, P, 1 << 21, uapi.MOCK_APERTURE_START, uapi.MOCK_APERTURE_START + P]),
    st.integers(0, 1 << 26).map(lambda x: x & ~0x7FF),
)
ops = st.one_of(
    st.tuples(st.just("alloc")),
    st.tuples(
        st.just("map"),
        st.integers(0, SLOTS - 1),
        st.integers(0, BUF_PAGES - 1),
        lengths,
        st.none() | iovas,
        st.sampled_from([2, 4, 6]),
    ),
    st.tuples(st.just("unmap"), st.integers(0, SLOTS - 1), iovas, lengths),
    st.tuples(st.just("unmap_all"), st.integers(0, SLOTS - 1)),
    st.tuples(
        st.just("copy"), st.integers(0, SLOTS - 1), st.integers(0, SLOTS - 1), iovas, lengths
    ),
    st.tuples(
        st.just("allow"), st.integers(0, SLOTS - 1), st.lists(st.tuples(iovas, lengths), max_size=2)
    ),
    st.tuples(st.just("reserve"), st.integers(0, SLOTS - 1), iovas, lengths),
    st.tuples(st.just("ranges"), st.integers(0, SLOTS - 1)),
    st.tuples(st.just("mock"), st.integers(0, SLOTS - 1)),
    st.tuples(st.just("dirty_hwpt"), st.integers(0, SLOTS - 1)),
    st.tuples(st.just("dirty_round"), st.integers(0, 2**32 - 1), st.sampled_from([0, 1])),
    st.tuples(st.just("destroy"), st.integers(0, 2 * SLOTS)),
)


@dataclass
class World:
    """Ids this sequence created, by slot, for one kernel."""

    ioas: list[int]
    devs: list[int]
    dirty: list[int]


def replay(kernel: Kernel, seq: list[tuple[object, ...]]) -> list[tuple[str, object]]:
    trace: list[tuple[str, object]] = []
    with kernel.open_fd("/dev/iommu") as fd, Buffer(BUF_PAGES * P, align=1 << 21) as buf:
        w = World([], [], [])

        def rec(what: str, fn: object, *args: object) -> object:
            try:
                out = fn(fd, *args)  # type: ignore[operator]
            except KernelError as e:
                trace.append((what, e.errno_name))
                return None
            trace.append((what, out))
            return out

        def slot(ids: list[int], i: object) -> int:
            assert isinstance(i, int)
            return ids[i % len(ids)] if ids else 0

        for op in seq:
            kind = op[0]
            if kind == "alloc":
                ioas = rec("alloc", ioas_alloc)
                if isinstance(ioas, int):
                    w.ioas.append(ioas)
            elif kind == "map":
                _, i, page, length, iova, prot = op
                assert isinstance(page, int) and isinstance(length, int)
                va = buf.addr + page * P
                if page * P + length > buf.length:
                    va = buf.addr
                    length = min(length, buf.length)
                rec("map", _map, slot(w.ioas, i), va, length, iova, prot)
            elif kind == "unmap":
                rec("unmap", ioas_unmap, slot(w.ioas, op[1]), op[2], op[3])
            elif kind == "unmap_all":
                rec("unmap_all", ioas_unmap, slot(w.ioas, op[1]), 0, U64_MAX)
            elif kind == "copy":
                rec("copy", ioas_copy, slot(w.ioas, op[1]), slot(w.ioas, op[2]), op[3], op[4])
            elif kind == "allow":
                spans = [(s, s + n - 1) for s, n in op[2]]  # type: ignore[attr-defined]
                rec("allow", allow_iovas, slot(w.ioas, op[1]), spans)
            elif kind == "reserve":
                rec("reserve", add_reserved, slot(w.ioas, op[1]), op[2], op[3])
            elif kind == "ranges":
                rec("ranges", iova_ranges, slot(w.ioas, op[1]))
            elif kind == "mock":
                dev = rec("mock", mock_domain, slot(w.ioas, op[1]))
                if isinstance(dev, tuple):
                    w.devs.append(dev[2])
            elif kind == "dirty_hwpt" and w.devs:
                hwpt = rec(
                    "dirty_hwpt",
                    hwpt_alloc,
                    slot(w.devs, op[1]),
                    slot(w.ioas, op[1]),
                    uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                )
                if isinstance(hwpt, int):
                    w.dirty.append(hwpt)
                    rec("mock_on_dirty", mock_domain, hwpt)
                    rec("track", set_dirty_tracking, hwpt, True)
            elif kind == "dirty_round" and w.dirty:
                _dirty_round(rec, w.dirty[-1], op[1], op[2])
            elif kind == "destroy":
                ids = w.ioas + w.devs + w.dirty
                rec("destroy", destroy, slot(ids, op[1]))
    return trace


def _map(fd: Fd, ioas: int, va: int, length: int, iova: int | None, prot: int) -> int:
    return ioas_map(fd, ioas, va, length, iova, prot)


def _dirty_round(rec: object, hwpt: int, bits: object, no_clear: object) -> None:
    assert callable(rec) and isinstance(bits, int)
    iova, length = uapi.MOCK_APERTURE_START, 32 * MOCK_PAGE_SIZE
    marks = (ctypes.c_uint64 * 1)(bits)
    rec("mark", mock_set_dirty, hwpt, iova, length, MOCK_PAGE_SIZE, ctypes.addressof(marks))
    out = (ctypes.c_uint64 * 2)()
    flags = uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR if no_clear else 0
    rec("read", get_dirty_bitmap, hwpt, iova, length, MOCK_PAGE_SIZE, ctypes.addressof(out), flags)
    rec("bits", lambda fd: (out[0], out[1]))


@pytest.mark.real_kernel
@settings(
    max_examples=examples(60),
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(seq=st.lists(ops, min_size=1, max_size=30))
def test_random_sequences_agree(seq: list[tuple[object, ...]]) -> None:
    real = make_kernel("real")
    from fastmap.sim import SimKernel

    sim = SimKernel(kernel_version=real.version)
    want = replay(real, seq)
    got = replay(sim, seq)
    assert got == want


def test_replay_tells_kernels_apart() -> None:
    """The harness can fail: two simulators that differ in one modelled detail (the
    automatic-IOVA alignment cap, CONFIG_TRANSPARENT_HUGEPAGE) give different traces."""
    from fastmap.sim import SimKernel

    seq: list[tuple[object, ...]] = [("alloc",), ("map", 0, 0, 16 * P, None, 6), ("ranges", 0)]
    thp = replay(SimKernel(transparent_hugepage=True), seq)
    no_thp = replay(SimKernel(transparent_hugepage=False), seq)
    assert thp[0] == no_thp[0] == ("alloc", 1)
    # 16 pages from a 2 MiB-aligned VA: aligned to 64 KiB, or only to a page without THP.
    assert thp[1] == ("map", 16 * P) and no_thp[1] == ("map", P)
    assert thp != no_thp
