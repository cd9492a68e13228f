"""The engine's one VA <-> IOVA index (Ioas.translate_*), single and bulk, as a stateful
differential test against the reference list model, over a simulated IOAS with no device
(which maps any VA, so the index is exercised without real memory)."""

from __future__ import annotations

import errno
import mmap

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from tests.fuzzing import examples

from fastmap import _core
from fastmap._tools.reference_allocator import ReferenceTranslationMap, RefError
from fastmap.errors import BatchError
from fastmap.ioas import Ioas

PAGE = mmap.PAGESIZE

if not hasattr(_core, "SimKernel"):
    pytest.skip("this build of fastmap._core has no simulated kernel", allow_module_level=True)

from fastmap.sim import SimKernel  # noqa: E402


def test_translate_both_ways_and_in_bulk() -> None:
    k = SimKernel()
    fd = k.open("/dev/iommu")
    with Ioas.allocate(k, fd) as io:
        io.map(0x7F00_0000_0000, 4 * PAGE, 0x10_0000)
        io.map(0x7F00_0010_0000, PAGE, 0x1000)
        assert io.translate_va(0x7F00_0000_0123) == 0x10_0123
        assert io.translate_va(0x7F00_0000_4000) is None
        assert io.translate_iova(0x1FFF) == 0x7F00_0010_0FFF
        assert io.translate_iova(0x2000) is None
        iovas, found = io.translate_va_bulk([0x7F00_0000_0123, 5, 0x7F00_0010_0FFF])
        assert found.tolist() == [True, False, True]
        assert iovas.tolist() == [0x10_0123, 0, 0x1FFF]
        vas, ok = io.translate_iova_bulk(np.array([0x10_3FFF, 0x10_4000], np.uint64))
        assert (vas.tolist(), ok.tolist()) == ([0x7F00_0000_3FFF, 0], [True, False])
        assert io.translate_va_bulk([])[0].shape == (0,)
        # A VA mapped twice translates to its lowest IOVA.
        io.map(0x7F00_0000_0000, PAGE, 0x8000)
        assert io.translate_va(0x7F00_0000_0010) == 0x8010
    k.close(fd)


class TranslationMachine(RuleBasedStateMachine):
    PAGES = st.integers(1, 0x40).map(lambda p: p * PAGE)

    def __init__(self) -> None:
        super().__init__()
        self.kernel = SimKernel()
        self.fd = self.kernel.open("/dev/iommu")
        self.io = Ioas.allocate(self.kernel, self.fd)
        self.ref = ReferenceTranslationMap()

    def teardown(self) -> None:
        self.io.close()
        self.kernel.close(self.fd)

    @rule(va=PAGES, iova=PAGES, pages=st.integers(1, 8))
    def insert(self, va: int, iova: int, pages: int) -> None:
        length = pages * PAGE
        try:
            self.ref.insert(va, iova, length)
        except RefError as e:
            if e.errno == errno.EADDRINUSE:
                return  # the engine allows VA aliases; the model does not
            with pytest.raises(BatchError) as err:
                self.io.map(va, length, iova)
            assert err.value.errno == e.errno
            return
        assert self.io.map(va, length, iova) == iova

    @precondition(lambda self: bool(self.ref.mappings))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        _, iova, length = data.draw(st.sampled_from(self.ref.mappings))
        self.ref.remove(iova)
        assert self.io.unmap(iova, length) == length

    @rule(entries=st.lists(st.tuples(PAGES, PAGES, st.integers(1, 2)), min_size=1, max_size=12))
    def insert_batch(self, entries: list[tuple[int, int, int]]) -> None:
        # Batches in any order: the engine's table and VA index merge out-of-order input and
        # stop using the segment array as the VA index once the two orders differ.
        added: list[int] = []
        for va, iova, pages in entries:
            try:
                self.ref.insert(va, iova, pages * PAGE)
            except RefError:
                for i in added:  # keep only batches the model takes whole
                    self.ref.remove(i)
                return
            added.append(iova)
        vas = [va for va, _, _ in entries]
        iovas = [iova for _, iova, _ in entries]
        lengths = [pages * PAGE for _, _, pages in entries]
        assert self.io.map_batch(vas, lengths, iovas).tolist() == iovas

    @precondition(lambda self: bool(self.ref.mappings))
    @rule(data=st.data())
    def remove_batch(self, data: st.DataObject) -> None:
        # Any subset in any order: more than a few take the one-pass compaction.
        gone = data.draw(st.permutations(self.ref.mappings)).copy()
        gone = gone[: data.draw(st.integers(1, len(gone)))]
        for _, iova, _ in gone:
            self.ref.remove(iova)
        want = sum(n for _, _, n in gone)
        assert self.io.unmap_batch([i for _, i, _ in gone], [n for _, _, n in gone]) == want

    @rule(addrs=st.lists(st.integers(0, 0x50 * PAGE), max_size=20))
    def lookups(self, addrs: list[int]) -> None:
        for v, i, n in self.ref.mappings:  # probe the edges of every mapping too
            addrs += [v, v + n - 1, i, i + n - 1, max(v - 1, 0)]
        iovas, vfound = self.io.translate_va_bulk(addrs)
        vas, ifound = self.io.translate_iova_bulk(addrs)
        for k, x in enumerate(addrs):
            want_iova = self.ref.translate_va(x)
            want_va = self.ref.translate_iova(x)
            assert self.io.translate_va(x) == want_iova
            assert self.io.translate_iova(x) == want_va
            assert (bool(vfound[k]), int(iovas[k])) == (want_iova is not None, want_iova or 0)
            assert (bool(ifound[k]), int(vas[k])) == (want_va is not None, want_va or 0)

    @invariant()
    def agrees(self) -> None:
        assert [(s.va, s.iova, s.length) for s in self.io.segments()] == self.ref.mappings


TestTranslationMachine = TranslationMachine.TestCase
TestTranslationMachine.settings = settings(
    max_examples=examples(100),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
