"""TranslationMap: examples, bulk lookups, and a stateful differential test against the
reference list model."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fastmap._tools.reference_allocator import U64_MAX, ReferenceTranslationMap, RefError
from fastmap.allocator import (
    AllocatorError,
    InvalidRequestError,
    IovaAllocator,
    Mapping,
    RangeInUseError,
    RangeNotFoundError,
    TranslationMap,
)

K = 0x1000


def test_translate_both_ways() -> None:
    t = TranslationMap()
    t.insert(0x7F00_0000_0000, 0x10_0000, 4 * K)
    t.insert(0x7F00_0010_0000, 0x1000, K)
    assert t.translate_va(0x7F00_0000_0123) == 0x10_0123
    assert t.translate_va(0x7F00_0000_3FFF) == 0x10_3FFF
    assert t.translate_va(0x7F00_0000_4000) is None
    assert t.translate_iova(0x1FFF) == 0x7F00_0010_0FFF
    assert t.translate_iova(0x2000) is None
    assert t.find_iova(0x10_2000) == Mapping(0x7F00_0000_0000, 0x10_0000, 4 * K)
    assert t.find_va(0x7F00_0010_0000) == Mapping(0x7F00_0010_0000, 0x1000, K)
    assert list(t) == [
        Mapping(0x7F00_0010_0000, 0x1000, K),
        Mapping(0x7F00_0000_0000, 0x10_0000, 4 * K),
    ]
    assert len(t) == 2
    assert t.remove(0x1000) == Mapping(0x7F00_0010_0000, 0x1000, K)
    assert t.translate_va(0x7F00_0010_0000) is None
    with pytest.raises(RangeNotFoundError):
        t.remove(0x1000)
    assert t.check_invariants()


def test_conflicts() -> None:
    t = TranslationMap()
    t.insert(0x10_0000, 0x1_0000, 2 * K)
    with pytest.raises(RangeInUseError) as e:
        t.insert(0x90_0000, 0x1_1000, K)
    assert e.value.space == "iova" and e.value.errno == errno.EEXIST
    with pytest.raises(RangeInUseError) as v:
        t.insert(0x10_1000, 0x9_0000, K)
    assert v.value.space == "va" and v.value.errno == errno.EADDRINUSE
    with pytest.raises(InvalidRequestError):
        t.insert(U64_MAX, 0, 2)
    with pytest.raises(InvalidRequestError):
        t.insert(0, 0, 0)
    t.insert(0x10_2000, 0x1_2000, K)  # touching in both spaces is fine
    assert len(t) == 2


def test_top_of_space() -> None:
    t = TranslationMap()
    t.insert(U64_MAX - K + 1, 0, K)
    t.insert(0, U64_MAX - K + 1, K)
    assert t.translate_va(U64_MAX) == K - 1
    assert t.translate_iova(U64_MAX) == K - 1
    assert t.translate_va(K) is None


def test_bulk_matches_scalar() -> None:
    rng = np.random.default_rng(3)
    a = IovaAllocator([(K, 1 << 40)])
    t = TranslationMap()
    va = 0x7F00_0000_0000
    for n in rng.integers(1, 64, 500):
        length = int(n) * K
        t.insert(va, a.alloc(length, hint_va=va), length)
        va += length + int(rng.integers(0, 4)) * K  # sometimes leave unmapped VA between
    probes = rng.integers(0x7F00_0000_0000 - 0x10_0000, va + 0x10_0000, 20_000, dtype=np.uint64)
    iovas, found = t.bulk_translate_va(probes)
    assert found.dtype == np.bool_ and iovas.dtype == np.uint64
    assert found.any() and not found.all()
    for p, i, f in zip(probes.tolist(), iovas.tolist(), found.tolist(), strict=True):
        want = t.translate_va(p)
        assert (want is not None) == f
        assert i == (want or 0)
    back, ok = t.bulk_translate_iova(iovas[found])
    assert ok.all()
    assert back.tolist() == probes[found].tolist()
    assert t.bulk_translate_va([])[0].shape == (0,)


class TranslationMachine(RuleBasedStateMachine):
    ADDR = st.one_of(st.integers(0, 0x4_0000), st.integers(U64_MAX - 0x4_0000, U64_MAX))

    def __init__(self) -> None:
        super().__init__()
        self.real = TranslationMap()
        self.ref = ReferenceTranslationMap()

    def same(self, real: Callable[[], Any], ref: Callable[[], Any]) -> None:
        try:
            expect = ref()
        except RefError as e:
            with pytest.raises(AllocatorError) as err:
                real()
            assert err.value.errno == e.errno
            return
        assert real() == expect

    @rule(va=ADDR, iova=ADDR, length=st.integers(1, 0x8000))
    def insert(self, va: int, iova: int, length: int) -> None:
        self.same(
            lambda: self.real.insert(va, iova, length), lambda: self.ref.insert(va, iova, length)
        )

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        starts = [m[1] for m in self.ref.mappings]
        iova = data.draw(st.sampled_from(starts) | self.ADDR if starts else self.ADDR)
        self.same(lambda: tuple(self.real.remove(iova)), lambda: self.ref.remove(iova))

    @rule(addrs=st.lists(ADDR, max_size=20))
    def lookups(self, addrs: list[int]) -> None:
        for m in self.ref.mappings:  # probe the edges of every mapping too
            addrs += [m[0], m[0] + m[2] - 1, m[1], m[1] + m[2] - 1, max(m[0] - 1, 0)]
        vas, vfound = self.real.bulk_translate_va(addrs)
        iovas, ifound = self.real.bulk_translate_iova(addrs)
        for k, x in enumerate(addrs):
            want_iova = self.ref.translate_va(x)
            want_va = self.ref.translate_iova(x)
            assert self.real.translate_va(x) == want_iova
            assert self.real.translate_iova(x) == want_va
            assert bool(vfound[k]) == (want_iova is not None)
            assert int(vas[k]) == (want_iova or 0)
            assert bool(ifound[k]) == (want_va is not None)
            assert int(iovas[k]) == (want_va or 0)

    @invariant()
    def agrees(self) -> None:
        assert [tuple(m) for m in self.real] == self.ref.mappings
        assert self.real.check_invariants()


TestTranslationMachine = TranslationMachine.TestCase
TestTranslationMachine.settings = settings(
    derandomize=True,
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
