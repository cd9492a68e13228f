"""IovaAllocator: worked examples of each rule, coalescing, batches, errors, and a long seeded
run against the reference model with thousands of live ranges (deep trees)."""

from __future__ import annotations

import errno
import random
import threading

import numpy as np
import pytest

from fastmap._tools.reference_allocator import U64_MAX, ReferenceAllocator, RefError
from fastmap.allocator import (
    AllocationError,
    AllocatorError,
    InvalidRequestError,
    IovaAllocator,
    IovaRange,
    RangeInUseError,
    RangeNotFoundError,
    RangeReservedError,
)

K = 0x1000
M2 = 1 << 21
G1 = 1 << 30


def ranges(a: IovaAllocator) -> list[tuple[int, int]]:
    return [tuple(r) for r in a]


# ---- placement rules -------------------------------------------------------------------------


def test_first_fit_takes_lowest_address_that_fits() -> None:
    a = IovaAllocator([(0, 0xF_FFFF)])
    x = [a.alloc(K) for _ in range(6)]
    assert x == [i * K for i in range(6)]
    a.free(x[1])  # 1-page hole at 0x1000
    a.free(x[3])
    a.free(x[4])  # 2-page hole at 0x3000
    assert a.alloc(2 * K) == 3 * K  # skips the 1-page hole
    assert a.alloc(K) == 1 * K
    assert a.check_invariants()


def test_best_fit_takes_smallest_gap_lowest_on_ties() -> None:
    a = IovaAllocator([(0, 0xF_FFFF)])
    x = [a.alloc(K) for _ in range(10)]
    for i in (1, 2, 3, 5, 6, 8):  # holes: 3 pages at 0x1000, 2 at 0x5000, 1 at 0x8000
        a.free(x[i])
    assert a.alloc(K, fit="best") == 8 * K
    assert a.alloc(2 * K, fit="best") == 5 * K
    # Now only the 3-page hole and the tail remain; the hole is smaller than the tail.
    assert a.alloc(K, fit="best") == 1 * K
    b = IovaAllocator([(0, 0xF_FFFF)])
    y = [b.alloc(K) for _ in range(5)]
    b.free(y[1])
    b.free(y[3])  # two equal 1-page holes
    assert b.alloc(K, fit="best") == 1 * K
    assert b.check_invariants()


@pytest.mark.parametrize("align", [1 << k for k in range(0, 31, 3)])
def test_alignment(align: int) -> None:
    a = IovaAllocator([(0x1234, 1 << 40)])
    for length in (1, 0x1001, 0x3000, 0x12345):
        iova = a.alloc(length, align)
        assert iova % align == 0
        assert iova >= 0x1234


def test_alignment_skips_gaps_that_fit_only_unaligned() -> None:
    a = IovaAllocator([(0, 0xFF_FFFF)])
    a.alloc_fixed(0, 0x1000)
    a.alloc_fixed(0x3000, 0x1000)  # hole 0x1000..0x2fff: big enough, but not 8K-aligned
    a.alloc_fixed(0x6000, 0x1000)  # hole 0x4000..0x5fff
    assert a.alloc(0x2000, 0x4000) == 0x4000
    assert a.alloc(0x2000, 0x2000) == 0x8000  # skips the first hole, lands after 0x6fff
    assert a.alloc(0x1000, 0x2000) == 0x2000  # but a single page fits it
    assert a.check_invariants()


def test_hint_keeps_huge_page_offset() -> None:
    a = IovaAllocator([(K, 1 << 48)])
    va = 0x7F12_3456_7000
    # >= 1 GiB: iova ≡ va (mod 1 GiB)
    assert a.alloc(G1 + 5 * K, hint_va=va) % G1 == va % G1
    # >= 2 MiB: iova ≡ va (mod 2 MiB)
    assert a.alloc(3 * M2, hint_va=va) % M2 == va % M2
    # smaller: only the page offset (align granule) is kept
    iova = a.alloc(5 * K, hint_va=va + 0x123)
    assert iova % K == 0x123
    # no hint: plain alignment
    assert a.alloc(3 * M2) % K == 0
    assert a.check_invariants()


def test_huge_page_sizes_are_configurable() -> None:
    a = IovaAllocator(huge_page_sizes=(1 << 16,))
    assert a.huge_page_sizes == (1 << 16,)
    assert a.alloc(1 << 16, hint_va=0xABCD_E000) % (1 << 16) == 0xE000
    # No configured size is above 64 KiB, so a 2 MiB buffer keeps only the 64 KiB offset.
    assert a.alloc(1 << 21, hint_va=0x12_3000) % (1 << 16) == 0x3000
    with pytest.raises(InvalidRequestError):
        IovaAllocator(huge_page_sizes=(3 << 20,))


def test_allowed_ranges_and_reserved() -> None:
    a = IovaAllocator([(0x1_0000, 0x1_FFFF), (0x3_0000, 0x3_FFFF)], [(0x1_0000, 0x1_0FFF)])
    assert a.alloc(K) == 0x1_1000
    assert a.alloc(0x1_0000) == 0x3_0000  # does not fit in the rest of the first window
    with pytest.raises(AllocationError) as e:
        a.alloc(0x1_0000)
    assert e.value.length == 0x1_0000 and e.value.align == K and e.value.errno == errno.ENOSPC
    assert e.value.largest_free_gap == IovaRange(0x1_2000, 0x1_FFFF)
    assert isinstance(e.value, MemoryError)
    assert a.is_reserved(0x1_0000) and a.is_reserved(0x2_0000) and not a.is_reserved(0x1_2000)
    assert a.reserved_ranges() == [
        IovaRange(0, 0x1_0FFF),  # below the window merged with the reserved page
        IovaRange(0x2_0000, 0x2_FFFF),
        IovaRange(0x4_0000, U64_MAX),
    ]


def test_whole_64bit_space() -> None:
    a = IovaAllocator()
    assert a.largest_free_gap() == IovaRange(0, U64_MAX)
    assert a.largest_free_gap().length == 1 << 64  # type: ignore[union-attr]
    assert a.alloc(U64_MAX, 1) == 0  # all but the last byte
    assert a.alloc(1, 1) == U64_MAX
    assert a.largest_free_gap() is None
    with pytest.raises(AllocationError):
        a.alloc(1, 1)
    a.free(0)
    a.free(U64_MAX)
    assert a.largest_free_gap() == IovaRange(0, U64_MAX)
    # A candidate that would wrap past 2**64 is never returned.
    b = IovaAllocator([(U64_MAX - 0x1FFF, U64_MAX)])
    with pytest.raises(AllocationError):
        b.alloc(K, 1 << 63)
    assert b.alloc(K, 1 << 12) == U64_MAX - 0x1FFF


# ---- coalescing ------------------------------------------------------------------------------


def test_free_space_coalesces_with_both_neighbours() -> None:
    a = IovaAllocator([(0x10_0000, 0x1F_FFFF)])
    x = [a.alloc(K) for _ in range(8)]
    a.alloc(K)  # a guard so the tail stays separate
    tail = a.largest_free_gap()
    a.free(x[2])
    a.free(x[4])
    a.free(x[3])  # joins [2] and [4] into one gap of 3 pages
    gaps_small = a.alloc(3 * K, fit="best")
    assert gaps_small == x[2]
    a.free(gaps_small)
    for i in (0, 1, 5, 6, 7):
        a.free(x[i])
    # Everything below the guard is one gap again: an 8-page best-fit lands at the bottom.
    assert a.alloc(8 * K, fit="best") == x[0]
    assert a.largest_free_gap() == tail
    assert a.check_invariants()


def test_freeing_everything_restores_one_gap() -> None:
    window = (0x1000, 0x1000_0FFF)
    a = IovaAllocator([window])
    rng = random.Random(7)
    live = [a.alloc(rng.randint(1, 40) * K, 1 << rng.randint(12, 16)) for _ in range(300)]
    rng.shuffle(live)
    for iova in live:
        a.free(iova)
        assert a.check_invariants()
    assert len(a) == 0
    assert a.largest_free_gap() == IovaRange(*window)
    assert a.alloc(window[1] - window[0] + 1, 1) == window[0]


def test_partial_free_splits_and_merges() -> None:
    a = IovaAllocator([(0, 0xFFFF_FFFF)])
    x = a.alloc(8 * K)
    assert a.free(x + 2 * K, 2 * K) == IovaRange(x + 2 * K, x + 4 * K - 1)
    assert ranges(a) == [(x, x + 2 * K - 1), (x + 4 * K, x + 8 * K - 1)]
    assert a.alloc(2 * K) == x + 2 * K  # the hole is reusable
    a.free(x + 2 * K)
    a.free(x, K)  # trims the front; [x + K, x + 2K) stays
    assert ranges(a)[0] == (x + K, x + 2 * K - 1)
    with pytest.raises(RangeNotFoundError):
        a.free(x + K, 8 * K)  # runs past the allocation
    assert a.check_invariants()


# ---- fixed allocations and errors ------------------------------------------------------------


def test_alloc_fixed_conflicts() -> None:
    a = IovaAllocator([(0x1000, 0xFFFF_FFFF)], [(0xFEE0_0000, 0xFEEF_FFFF)])
    assert a.alloc_fixed(0x10_0000, 0x1000) == 0x10_0000
    with pytest.raises(RangeInUseError) as e:
        a.alloc_fixed(0xF_F800, 0x1000)
    assert e.value.errno == errno.EEXIST and isinstance(e.value, ValueError)
    with pytest.raises(RangeReservedError) as r:
        a.alloc_fixed(0xFEEF_F000, 0x2000)  # the MSI window
    assert r.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(RangeReservedError):
        a.alloc_fixed(0, 0x1000)  # outside the allowed ranges
    with pytest.raises(InvalidRequestError) as o:
        a.alloc_fixed(U64_MAX, 2)
    assert o.value.errno == errno.EOVERFLOW
    with pytest.raises(InvalidRequestError):
        a.alloc_fixed(0x2000, 0)


def test_free_errors() -> None:
    a = IovaAllocator([(0x1000, 0xFFFF)], [(0x8000, 0x8FFF)])
    x = a.alloc(2 * K)
    with pytest.raises(RangeNotFoundError):
        a.free(x + K)  # not the start
    with pytest.raises(RangeReservedError) as e:
        a.free(0x8000)
    assert e.value.errno == errno.EPERM
    a.free(x)
    with pytest.raises(RangeNotFoundError):
        a.free(x)  # double free


def test_reserve_after_allocating() -> None:
    a = IovaAllocator([(0, 0xFFFF)])
    x = a.alloc(K)
    with pytest.raises(RangeInUseError):
        a.reserve(x, x)
    a.reserve(x + K, x + 2 * K - 1)
    a.reserve(x + 2 * K, x + 3 * K - 1)  # touching reserved ranges merge
    assert a.reserve(0x8000, 0x8FFF) is None
    assert IovaRange(x + K, x + 3 * K - 1) in a.reserved_ranges()
    assert a.alloc(K) == x + 3 * K


def test_argument_checks() -> None:
    a = IovaAllocator()
    for bad in (0, 3, 0x3000):
        with pytest.raises(InvalidRequestError):
            a.alloc(K, bad)
    with pytest.raises(InvalidRequestError):
        a.alloc(0)
    with pytest.raises(InvalidRequestError):
        a.alloc(-1)
    with pytest.raises(InvalidRequestError):
        a.alloc(1 << 64)
    with pytest.raises(InvalidRequestError):
        a.alloc(K, fit="worst")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        a.alloc(1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        IovaAllocator([(10, 5)])
    with pytest.raises(InvalidRequestError):
        a.bulk_alloc([K, -1])
    with pytest.raises(InvalidRequestError):
        a.bulk_alloc(np.array([K, -1]))
    with pytest.raises(TypeError):
        a.bulk_alloc(np.array([1.0, 2.0]))
    with pytest.raises(InvalidRequestError):
        a.bulk_alloc([K, K], hint_vas=[0])
    assert len(a) == 0


# ---- batches ---------------------------------------------------------------------------------


def test_bulk_alloc_matches_single_calls() -> None:
    lengths = np.array([K, 3 * K, M2, 5 * K, 7], dtype=np.uint64)
    hints = np.array([0x7000, 0x1_2000, 0x7F00_0012_3000, 0, 0x1FF], dtype=np.uint64)
    for fit in ("first", "best"):
        a = IovaAllocator([(K, 1 << 40)])
        b = IovaAllocator([(K, 1 << 40)])
        out = a.bulk_alloc(lengths, K, hints, fit)  # type: ignore[arg-type]
        assert out.dtype == np.uint64
        one = [b.alloc(int(n), K, int(h), fit) for n, h in zip(lengths, hints, strict=True)]  # type: ignore[arg-type]
        assert out.tolist() == one
    assert IovaAllocator().bulk_alloc([]).shape == (0,)


def test_bulk_alloc_is_all_or_nothing() -> None:
    a = IovaAllocator([(0, 0xF_FFFF)])
    a.alloc(3 * K)
    before = ranges(a)
    gap = a.largest_free_gap()
    with pytest.raises(AllocationError) as e:
        a.bulk_alloc([K, K, 0x10_0000, K])  # the third cannot fit
    assert e.value.index == 2 and e.value.length == 0x10_0000
    assert ranges(a) == before and a.largest_free_gap() == gap
    with pytest.raises(InvalidRequestError) as z:
        a.bulk_alloc([K, 0])
    assert z.value.index == 1
    assert ranges(a) == before
    assert a.check_invariants()


def test_bulk_free_is_all_or_nothing() -> None:
    a = IovaAllocator([(0, 0xFF_FFFF)], [(0xF0_0000, 0xF0_0FFF)])
    out = a.bulk_alloc([K] * 10, fit="best")
    before = ranges(a)
    with pytest.raises(RangeNotFoundError) as e:
        a.bulk_free([out[0], out[5], out[0]])  # a double free inside the batch
    assert e.value.index == 2
    assert ranges(a) == before
    with pytest.raises(RangeReservedError) as r:
        a.bulk_free([out[1], 0xF0_0000])
    assert r.value.index == 1
    assert ranges(a) == before
    a.bulk_free(out[::2])
    assert ranges(a) == [r for i, r in enumerate(before) if i % 2]
    assert a.check_invariants()


def test_threads_share_an_allocator() -> None:
    """Batch calls run without the GIL; the allocator's lock keeps them consistent."""
    a = IovaAllocator([(0, 1 << 40)])
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            rng = np.random.default_rng(seed)
            for _ in range(50):
                out = a.bulk_alloc(
                    rng.integers(1, 16, 200) * K, fit="best" if seed % 2 else "first"
                )
                a.bulk_free(out[rng.permutation(out.size)])
                a.alloc(K)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(a) == 4 * 50
    assert a.check_invariants()


# ---- a long run against the reference --------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_long_random_run_matches_reference(seed: int) -> None:
    """Thousands of live ranges: deep trees, many rotations, many alignment detours."""
    rng = random.Random(seed)
    window = [(0x1000, 0x3FFF_FFFF), (0x8000_0000, 0xFFFF_FFFF)]
    reserved = [(0x2000_0000, 0x2000_FFFF)]
    huge = (1 << 16, 1 << 21)
    a = IovaAllocator(window, reserved, huge_page_sizes=huge)
    ref = ReferenceAllocator(window, reserved, huge)
    live: list[int] = []
    for step in range(6000):
        op = rng.random()
        if op < 0.6 or not live:
            length = rng.choice([K, 2 * K, 3 * K, 8 * K, rng.randint(1, 0x8_0000)])
            align = 1 << rng.choice([0, 12, 12, 12, 13, 16, 21])
            hint = rng.choice([None, rng.getrandbits(64)])
            fit = rng.choice(["first", "first", "best"])
            try:
                want: int | None = ref.alloc(length, align, hint, fit)
            except RefError:
                want = None
            try:
                got: int | None = a.alloc(length, align, hint, fit)  # type: ignore[arg-type]
            except AllocationError:
                got = None
            assert got == want, (step, length, align, hint, fit)
            if got is not None:
                live.append(got)
        else:
            iova = live.pop(rng.randrange(len(live)))
            assert tuple(a.free(iova)) == ref.free(iova)
        if step % 500 == 0:
            assert ranges(a) == ref.allocated()
            assert a.check_invariants()
    assert len(live) > 1000
    assert ranges(a) == ref.allocated()
    assert tuple(a.largest_free_gap() or ()) == tuple(ref.largest_free_gap() or ())


def test_error_classes_share_a_base() -> None:
    for cls in (
        AllocationError,
        InvalidRequestError,
        RangeInUseError,
        RangeNotFoundError,
        RangeReservedError,
    ):
        assert issubclass(cls, AllocatorError)


# ---- tree shapes: splits and merges on every level ----------------------------------------------


@pytest.mark.parametrize("reserved", [False, True], ids=["plain", "with_reserved"])
@pytest.mark.parametrize("delete", ["random", "from_left", "from_right"])
@pytest.mark.parametrize("insert", ["ascending", "descending", "random"])
def test_grow_and_shrink_through_every_tree_level(insert: str, delete: str, reserved: bool) -> None:
    """Ten thousand ranges make a tree several levels deep; filling it in various orders
    (so nodes end up with various fills) and emptying it in others exercises every split,
    merge and refill path, with reserved ranges riding along. A set is the model."""
    n = 12_000
    rng = random.Random(f"{insert}-{delete}-{reserved}")
    a = IovaAllocator([(0, 1 << 40)])
    slots = [i * 2 * K for i in range(n)]  # a free page between neighbours
    kept = set(slots[::5]) if reserved else set()  # reserved: never freed
    order = list(slots)
    if insert == "descending":
        order.reverse()
    elif insert == "random":
        rng.shuffle(order)
    for s in order:
        if s in kept:
            a.reserve(s, s + K - 1)
        else:
            a.alloc_fixed(s, K)
    assert a.check_invariants()
    victims = [s for s in slots if s not in kept]
    if delete == "random":
        rng.shuffle(victims)
    elif delete == "from_right":
        victims.reverse()
    live = set(victims)
    for k, s in enumerate(victims[:-3]):
        a.free(s)
        live.discard(s)
        if k % 997 == 0:
            assert a.check_invariants()
            assert [r.start for r in a] == sorted(live)
    assert [r.start for r in a] == sorted(live) and a.check_invariants()
    beyond = IovaRange((1 << 40) + 1, U64_MAX)  # outside the allowed range
    assert a.reserved_ranges() == [IovaRange(s, s + K - 1) for s in sorted(kept)] + [beyond]
    # Refill first-fit, one page at a time: the lowest free pages, in order.
    out = a.bulk_alloc([K] * 3000)
    taken, expect, page = live | kept, [], 0
    while len(expect) < 3000:
        if page not in taken:
            expect.append(page)
        page += K
    assert out.tolist() == expect
    assert a.check_invariants() and len(a) == 3003
