"""Differential test: the C++ IovaAllocator against the pure-Python reference model.

Hypothesis drives random sequences of every operation; each result (IOVA, error errno,
failing batch index) must equal the reference's, and after every step the allocation list,
the reserved list, the largest gap and the internal invariants must agree. Small address
windows make collisions, ENOSPC and alignment rejections common; a second machine works at
both ends of the 64-bit space where overflow lurks.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, ClassVar

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from tests.fuzzing import examples

from fastmap._tools.reference_allocator import U64_MAX, ReferenceAllocator, RefError
from fastmap.allocator import AllocatorError, IovaAllocator

SETTINGS = settings(
    max_examples=examples(200),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

FITS = st.sampled_from(["first", "best"])
ALIGNS = st.sampled_from([1 << k for k in (0, 1, 3, 9, 12, 12, 12, 13, 14, 16, 17)])


class AllocatorMachine(RuleBasedStateMachine):
    RANGES: ClassVar[list[tuple[int, int]] | None] = None
    RESERVED: ClassVar[list[tuple[int, int]]] = []
    HUGE: ClassVar[tuple[int, ...]] = ()
    ADDRS: ClassVar[st.SearchStrategy[int]] = st.integers(0, U64_MAX)
    LENGTHS: ClassVar[st.SearchStrategy[int]] = st.integers(1, 1 << 16)

    def __init__(self) -> None:
        super().__init__()
        self.real = IovaAllocator(self.RANGES, self.RESERVED, huge_page_sizes=self.HUGE)
        self.ref = ReferenceAllocator(self.RANGES, self.RESERVED, self.HUGE)

    def same(self, real: Callable[[], Any], ref: Callable[[], Any]) -> Any:
        """Runs both; both must succeed with equal results or fail with the same errno (and
        the same batch index)."""
        try:
            expect = ref()
        except RefError as e:
            event(f"{type(self).__name__}: {e}")
            try:
                got = real()
            except AllocatorError as err:
                assert err.errno == e.errno, (err, e)
                if e.index is not None:
                    assert getattr(err, "index", None) == e.index, (err, e)
                return None
            raise AssertionError(f"reference failed with {e}, fastmap returned {got!r}") from e
        got = real()
        assert got == expect, (got, expect)
        return got

    def allocations(self) -> list[tuple[int, int]]:
        return self.ref.allocated()

    # -- rules --

    @rule(data=st.data(), align=ALIGNS, fit=FITS, hint=st.none() | st.integers(0, U64_MAX))
    def alloc(self, data: st.DataObject, align: int, fit: str, hint: int | None) -> None:
        length = data.draw(self.LENGTHS)
        self.same(
            lambda: self.real.alloc(length, align, hint, fit),  # type: ignore[arg-type]
            lambda: self.ref.alloc(length, align, hint, fit),
        )

    @rule(data=st.data(), length=st.integers(1, 1 << 16))
    def alloc_fixed(self, data: st.DataObject, length: int) -> None:
        iova = data.draw(self.ADDRS)
        self.same(
            lambda: self.real.alloc_fixed(iova, length), lambda: self.ref.alloc_fixed(iova, length)
        )

    @rule(data=st.data())
    def free_existing(self, data: st.DataObject) -> None:
        allocs = self.allocations()
        if not allocs:
            return
        start, _ = data.draw(st.sampled_from(allocs))
        self.same(lambda: tuple(self.real.free(start)), lambda: self.ref.free(start))

    @rule(data=st.data())
    def free_anywhere(self, data: st.DataObject) -> None:
        iova = data.draw(self.ADDRS)
        self.same(lambda: tuple(self.real.free(iova)), lambda: self.ref.free(iova))

    @rule(data=st.data())
    def free_part(self, data: st.DataObject) -> None:
        allocs = self.allocations()
        if allocs and data.draw(st.booleans()):
            start, last = data.draw(st.sampled_from(allocs))
            a = data.draw(st.integers(start, last))
            b = data.draw(st.integers(a, min(last + 2, U64_MAX)))  # sometimes past the end
        else:
            a = data.draw(self.ADDRS)
            b = min(a + data.draw(st.integers(0, 1 << 14)), U64_MAX)
        length = b - a + 1
        self.same(lambda: tuple(self.real.free(a, length)), lambda: self.ref.free(a, length))

    @rule(align=ALIGNS, fit=FITS, with_hints=st.booleans(), data=st.data())
    def bulk_alloc(self, align: int, fit: str, with_hints: bool, data: st.DataObject) -> None:
        lengths = data.draw(st.lists(self.LENGTHS, max_size=8))
        hints = None
        if with_hints:
            hints = data.draw(
                st.lists(st.integers(0, U64_MAX), min_size=len(lengths), max_size=len(lengths))
            )
        self.same(
            lambda: self.real.bulk_alloc(lengths, align, hints, fit).tolist(),  # type: ignore[arg-type]
            lambda: self.ref.bulk_alloc(lengths, align, hints, fit),
        )

    @rule(data=st.data())
    def bulk_free(self, data: st.DataObject) -> None:
        starts = [s for s, _ in self.allocations()]
        picks = (
            data.draw(st.lists(st.sampled_from(starts), unique=True, max_size=6)) if starts else []
        )
        if data.draw(st.booleans()):  # sometimes spoil the batch: a bogus or repeated IOVA
            bad = data.draw(self.ADDRS if not picks else st.sampled_from(picks) | self.ADDRS)
            picks.insert(data.draw(st.integers(0, len(picks))), bad)
        self.same(lambda: self.real.bulk_free(picks), lambda: self.ref.bulk_free(picks))

    @rule(data=st.data(), length=st.integers(1, 1 << 14))
    def reserve(self, data: st.DataObject, length: int) -> None:
        start = data.draw(self.ADDRS)
        last = min(start + length - 1, U64_MAX)
        self.same(lambda: self.real.reserve(start, last), lambda: self.ref.reserve(start, last))

    @rule(data=st.data())
    def lookups(self, data: st.DataObject) -> None:
        iova = data.draw(self.ADDRS)
        e = self.ref.find(iova)
        assert self.real.contains(iova) == self.ref.contains(iova)
        assert (iova in self.real) == self.ref.contains(iova)
        assert self.real.is_reserved(iova) == (e is not None and e[2])
        found = self.real.find(iova)
        assert (None if found is None else tuple(found)) == (
            None if e is None or e[2] else (e[0], e[1])
        )

    # -- invariants --

    @invariant()
    def agrees(self) -> None:
        assert [tuple(r) for r in self.real] == self.ref.allocated()
        assert [tuple(r) for r in self.real.reserved_ranges()] == self.ref.reserved()
        assert len(self.real) == len(self.ref.allocated())
        assert self.real.reserved_count == len(self.ref.reserved())
        gap = self.real.largest_free_gap()
        assert (None if gap is None else tuple(gap)) == self.ref.largest_free_gap()
        assert self.real.check_invariants()


class SmallWindows(AllocatorMachine):
    """Two allowed windows with a reserved hole; small huge pages so hints bite."""

    RANGES: ClassVar[list[tuple[int, int]] | None] = [(0x1000, 0x3_FFFF), (0x5_0000, 0x8_FFFF)]
    RESERVED: ClassVar[list[tuple[int, int]]] = [(0x2_0000, 0x2_0FFF)]
    HUGE: ClassVar[tuple[int, ...]] = (0x4000, 0x2_0000)
    ADDRS = st.integers(0, 0x9_FFFF)
    LENGTHS = st.one_of(st.integers(1, 0x9000), st.integers(1, 16).map(lambda n: n * 0x1000))


class SpaceEdges(AllocatorMachine):
    """The bottom and top of the 64-bit space: wrap-around at 2**64 must never place a range."""

    RANGES: ClassVar[list[tuple[int, int]] | None] = [(0, 0xFFFF), (U64_MAX - 0xFFFF, U64_MAX)]
    HUGE: ClassVar[tuple[int, ...]] = (0x2000,)
    ADDRS = st.one_of(st.integers(0, 0x1_FFFF), st.integers(U64_MAX - 0x1_FFFF, U64_MAX))
    LENGTHS = st.one_of(st.integers(1, 0x3000), st.sampled_from([0x1000, 0x8000, 0x10000]))


class WholeSpace(AllocatorMachine):
    """No allowed-range restriction: gaps reach 0 and 2**64 - 1 themselves."""

    HUGE: ClassVar[tuple[int, ...]] = (1 << 21,)
    ADDRS = st.one_of(
        st.integers(0, 0x4_0000), st.integers(U64_MAX - 0x4_0000, U64_MAX), st.just(U64_MAX)
    )
    LENGTHS = st.one_of(st.integers(1, 0x5000), st.just(U64_MAX), st.integers(1 << 62, U64_MAX))


class Preloaded(AllocatorMachine):
    """Starts from ~600 small ranges, so every step works on a tree several levels deep
    (leaves hold 32 ranges), with splits and merges happening under the random steps."""

    RANGES: ClassVar[list[tuple[int, int]] | None] = [(0x1000, 0x1_0FFF)]
    RESERVED: ClassVar[list[tuple[int, int]]] = [(0x8000, 0x80FF)]
    HUGE: ClassVar[tuple[int, ...]] = (0x100, 0x1000)
    ADDRS = st.integers(0, 0x1_2000)
    LENGTHS = st.one_of(st.integers(1, 0x40), st.integers(1, 8).map(lambda n: n * 0x20))

    def __init__(self) -> None:
        super().__init__()
        rng = random.Random(0)
        pos = 0x1000
        while pos < 0x1_0F00 and len(self.ref.entries) < 600:
            pos += rng.randint(1, 0x40)  # a free gap
            length = rng.randint(1, 0x40)
            try:
                self.ref.alloc_fixed(pos, length)
            except RefError:
                continue
            self.real.alloc_fixed(pos, length)
            pos += length


TestSmallWindows = SmallWindows.TestCase
TestSmallWindows.settings = SETTINGS
TestSpaceEdges = SpaceEdges.TestCase
TestSpaceEdges.settings = SETTINGS
TestWholeSpace = WholeSpace.TestCase
TestWholeSpace.settings = SETTINGS
TestPreloaded = Preloaded.TestCase
TestPreloaded.settings = settings(SETTINGS, max_examples=examples(60))
