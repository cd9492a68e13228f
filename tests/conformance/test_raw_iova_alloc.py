"""Automatic IOVA allocation against a pure-Python statement of the §2.3 rule."""

from __future__ import annotations

import errno
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import examples

from .raw import PAGE, U64_MAX, Iommufd, anon

HPAGE = PAGE * (PAGE // 8)  # one PMD: 2 MiB with 4 KiB pages


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, last in sorted(spans):
        if out and s <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([s, last])
    return [(a, b) for a, b in out]


def reference_alloc(
    addr: int,
    length: int,
    areas: list[tuple[int, int]],
    reserved: list[tuple[int, int]],
    allowed: list[tuple[int, int]],
    iova_alignment: int = 1,
    thp: bool = True,
) -> int:
    """iopt_alloc_iova as the doc states it: the IOVA, or -errno."""
    if length == 0 or length >= U64_MAX // 2:
        return -errno.EOVERFLOW
    align = 1 << (length - 1).bit_length()
    if addr:
        align = min(align, addr & -addr)
    cap = HPAGE if thp else PAGE
    align = min(align, cap)
    if align < iova_alignment:
        return -errno.EINVAL
    offset = addr % PAGE

    def fit(start: int, last: int) -> int | None:
        if start + align - 1 > U64_MAX:
            return None
        cand = ((start + align - 1) & ~(align - 1)) | offset
        if cand >= last or last - cand < length - 1:
            return None
        return cand

    lo, hi = PAGE, U64_MAX - PAGE
    if allowed:
        spans = [(max(s, lo), min(e, hi)) for s, e in sorted(allowed) if not (e < lo or s > hi)]
    else:
        spans = [(lo, hi)]
    used = _merge(areas + reserved)
    for s, e in spans:
        start = fit(s, e)
        if start is None:
            continue
        cur = start
        for us, ue in used:
            if ue < cur:
                continue
            if us > e:
                break
            if us > cur:
                got = fit(cur, us - 1)
                if got is not None:
                    return got
            cur = max(cur, ue + 1)
            if ue >= e:
                cur = None  # type: ignore[assignment]
                break
        if cur is not None:
            got = fit(cur, e)
            if got is not None:
                return got
    return -errno.ENOSPC


def test_worked_example(core: Any) -> None:
    """Doc §2.3: 2 MiB-aligned VA, 3 pages -> align 16 KiB -> 0x4000; then 1 page -> 0x1000."""
    f = Iommufd(core)
    ioas = f.ioas()
    va = anon(4 << 20, align=2 << 20)
    assert f.map(ioas, va, 3 * PAGE) == (0, 0x4000)
    assert f.map(ioas, va, PAGE) == (0, 0x1000)
    # IOVA 0 and the last page are never handed out.
    assert reference_alloc(va, 3 * PAGE, [], [], []) == 0x4000


def test_thp_cap() -> None:
    """Sim only: CONFIG_TRANSPARENT_HUGEPAGE is the simulator's configuration."""
    for thp, expect in ((True, HPAGE), (False, PAGE)):
        f = Iommufd(transparent_hugepage=thp)
        ioas = f.ioas()
        va = 1 << 40  # no domain: the VA is only a hint
        assert f.map(ioas, va, 64 << 20) == (0, expect)


def test_page_offset_is_kept(core: Any) -> None:
    f = Iommufd(core)
    ioas = f.ioas()
    assert f.map(ioas, (1 << 30) + 0x123, 0x10)[1] % PAGE == 0x123


def test_length_one_into_a_one_byte_hole_is_refused(core: Any) -> None:
    """The strict `aligned_start < last` test: a hole's own last byte is never used."""
    f = Iommufd(core)
    ioas = f.ioas()
    assert f.allow(ioas, [(0x10000, 0x10001)]) == 0
    assert f.map(ioas, 0x10000, 1, iova=0x10000)[0] == 0
    # Only 0x10001 is left in the allowed range: it is the hole's last byte.
    assert f.map(ioas, 0x10001, 1) == (-errno.ENOSPC, 0)
    ref = reference_alloc(0x10001, 1, [(0x10000, 0x10000)], [], [(0x10000, 0x10001)])
    assert ref == -errno.ENOSPC


def test_errors(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    f.mock_domain(ioas)  # iova_alignment 2048
    # A VA whose low bit is below the IOAS alignment cannot be auto-placed.
    assert f.map(ioas, anon(2 * PAGE) + 1024, 2048)[0] == -errno.EINVAL
    assert f.allow(ioas, [(1 << 24, (1 << 24) + 4 * PAGE - 1)]) == 0
    va = anon(8 * PAGE, align=8 * PAGE)
    assert f.map(ioas, va, 8 * PAGE)[0] == -errno.ENOSPC


# Keep the space small so holes, alignment and the allowed clip all matter.
ADDRS = st.one_of(
    st.just(0),
    st.integers(0, 1 << 24),
    st.integers(0, 1 << 20).map(lambda x: x * PAGE),
    st.sampled_from([1 << 21, 1 << 30, (1 << 21) + 0x800, 0x7FF]),
)
LENGTHS = st.one_of(
    st.integers(1, 3 * PAGE),
    st.integers(1, 64).map(lambda x: x * PAGE),
    st.sampled_from([1 << 21, 3 << 20, 1 << 22]),
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("auto"), ADDRS, LENGTHS),
        st.tuples(st.just("fixed"), st.integers(0, 1 << 24), LENGTHS),
        st.tuples(st.just("reserve"), st.integers(0, 1 << 24), st.integers(1, 1 << 20)),
    ),
    max_size=25,
)
ALLOWED = st.lists(st.tuples(st.integers(0, 1 << 24), st.integers(1, 1 << 22)), max_size=3)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, allowed=ALLOWED, thp=st.booleans())
def test_allocator_matches_reference(
    ops: list[tuple[str, int, int]], allowed: list[tuple[int, int]], thp: bool
) -> None:
    f = Iommufd(transparent_hugepage=thp)
    ioas = f.ioas()
    allow: list[tuple[int, int]] = []
    for s, n in allowed:
        rng = (s, s + n)
        if all(rng[1] < a or rng[0] > b for a, b in allow):
            allow.append(rng)
    assert f.allow(ioas, allow) == 0
    areas: list[tuple[int, int]] = []
    reserved: list[tuple[int, int]] = []
    for kind, a, n in ops:
        if kind == "reserve":
            rc = f.test_cmd("ADD_RESERVED", ioas, start=a, length=n)[0]
            clash = any(not (a + n - 1 < s or a > e) for s, e in areas + allow)
            assert rc == (-errno.EADDRINUSE if clash else 0)
            if rc == 0:
                reserved.append((a, a + n - 1))
        elif kind == "fixed":
            rc, _ = f.map(ioas, 1 << 40, n, iova=a)
            if any(not (a + n - 1 < s or a > e) for s, e in reserved):
                assert rc == -errno.EINVAL
            elif any(not (a + n - 1 < s or a > e) for s, e in areas):
                assert rc == -errno.EEXIST
            else:
                assert rc == 0
                areas.append((a, a + n - 1))
        else:
            expect = reference_alloc(a, n, areas, reserved, allow, thp=thp)
            rc, iova = f.map(ioas, a, n)
            if expect < 0:
                assert rc == expect
            else:
                assert (rc, iova) == (0, expect)
                areas.append((iova, iova + n - 1))
