"""Container-level dirty tracking as QEMU does it: start/stop over every dirty HWPT with
rollback, one bitmap ORed over the HWPTs at any page size, and everything dirty when a
device cannot be tracked. Simulated devices with DMA engines (VT-d with dirty tracking, and
an edu behind the mock IOMMU) write guest memory through their IOMMUs."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmap import bitmap, uapi
from fastmap.errors import DirtyTrackingWarning, KernelError
from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice
from fastmap.lifecycle.vfio_iommufd import IommufdContainer
from fastmap.sim import SimKernel
from tests.facilities import only_on_sim
from tests.fuzzing import examples
from tests.lifecycle.faulty import FaultyKernel
from tests.migration.conftest import GPA, PAGE, add_sim_device, dma_write_pages, set_bits

RAM = 1 << 20
PAGES = RAM // PAGE


class TwoHwpts:
    """One container, two dirty-tracking HWPTs: an edu behind VT-d and one behind the mock
    IOMMU (the mock domain refuses the VT-d device and vice versa, so each gets its own)."""

    def __init__(self, kernel: Kernel, huge_pages: bool = False) -> None:
        self.kernel = kernel
        self.space = AddressSpace("two-hwpts")
        self.be = IOMMUFDBackend(kernel=kernel)
        self.be.connect()
        self.vtd = VFIODevice(add_sim_device(kernel, iommu="vtd", dirty=True), kernel=kernel)
        self.mock = VFIODevice(add_sim_device(kernel, iommu="mock", dirty=True), kernel=kernel)
        self.vtd.attach(self.space, self.be)
        self.mock.attach(self.space, self.be)
        for d in (self.vtd, self.mock):
            d.enable_dma()
        c = self.vtd.container
        assert isinstance(c, IommufdContainer) and c is self.mock.container
        assert len(c.hwpts) == 2 and all(h.dirty_tracking for h in c.hwpts)
        self.c = c
        # Dirty bits are per IOPTE: without large IOPTEs every page has its own bit. (The
        # option can change only while nothing is mapped: RAM comes after.)
        c.ioas.huge_pages = huge_pages
        self.space.add_ram(RAM, GPA)

    def hwpt_bits(self, dev: VFIODevice) -> set[int]:
        """The pages one HWPT reports (read and clear)."""
        assert dev.hwpt is not None
        return set_bits(self.be.get_dirty_bitmap(dev.hwpt.id, GPA, RAM, PAGE), PAGES)

    def close(self) -> None:
        self.mock.detach()
        self.vtd.detach()
        self.be.disconnect()
        self.space.close()


@pytest.fixture
def two(fk: FaultyKernel) -> Iterator[TwoHwpts]:
    if fk.machine is None:
        pytest.skip("needs simulated devices with dirty tracking")
    t = TwoHwpts(fk)
    yield t
    t.close()


def record_set_calls(fk: FaultyKernel) -> list[tuple[int, int]]:
    """(hwpt_id, flags) of every SET_DIRTY_TRACKING that reached the kernel, from now on."""
    calls: list[tuple[int, int]] = []

    def note(arg: Any, ret: int) -> int:
        calls.append((int(arg.hwpt_id), int(arg.flags)))
        return ret

    fk.override("IOMMU_HWPT_SET_DIRTY_TRACKING", note)
    return calls


# --- start / stop and QEMU's rollback ------------------------------------------------------------
@only_on_sim
def test_start_failure_on_the_second_hwpt_rolls_back(two: TwoHwpts, fk: FaultyKernel) -> None:
    c = two.c
    first, second = (h.id for h in c.hwpts)
    calls = record_set_calls(fk)
    fk.fail("IOMMU_HWPT_SET_DIRTY_TRACKING", errno.EIO, nth=2)
    with pytest.raises(KernelError) as e:
        c.set_dirty_page_tracking(True)
    assert e.value.errno == errno.EIO
    enable = uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE
    # QEMU: the first was switched on; after the failure every dirty HWPT is set back.
    assert calls == [(first, enable), (first, 0), (second, 0)]
    assert not c.dirty_tracking
    # And nothing tracks: device writes set no dirty bits in either HWPT.
    dma_write_pages(two.vtd, GPA, [1])
    dma_write_pages(two.mock, GPA, [2])
    assert two.hwpt_bits(two.vtd) == set() and two.hwpt_bits(two.mock) == set()
    # Control: once started, the same writes show.
    c.set_dirty_page_tracking(True)
    dma_write_pages(two.vtd, GPA, [1])
    dma_write_pages(two.mock, GPA, [2])
    assert two.hwpt_bits(two.vtd) == {1} and two.hwpt_bits(two.mock) == {2}


@only_on_sim
def test_stop_failure_leaves_every_hwpt_tracking(two: TwoHwpts, fk: FaultyKernel) -> None:
    c = two.c
    c.set_dirty_page_tracking(True)
    first, second = (h.id for h in c.hwpts)
    calls = record_set_calls(fk)
    fk.fail("IOMMU_HWPT_SET_DIRTY_TRACKING", errno.EIO, nth=2)
    with pytest.raises(KernelError):
        c.set_dirty_page_tracking(False)
    enable = uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE
    assert calls == [(first, 0), (first, enable), (second, enable)]
    assert c.dirty_tracking
    dma_write_pages(two.vtd, GPA, [5])
    dma_write_pages(two.mock, GPA, [6])
    assert two.hwpt_bits(two.vtd) == {5} and two.hwpt_bits(two.mock) == {6}
    c.set_dirty_page_tracking(False)
    assert not c.dirty_tracking


@only_on_sim
def test_plain_hwpts_are_left_alone(fk: FaultyKernel) -> None:
    """Only DIRTY_TRACKING HWPTs are switched (a plain one would answer EOPNOTSUPP)."""
    if fk.machine is None:
        pytest.skip("needs simulated devices")
    with AddressSpace() as space, IOMMUFDBackend(kernel=fk) as be:
        space.add_ram(RAM, GPA)
        dirty = VFIODevice(add_sim_device(fk, iommu="vtd", dirty=True), kernel=fk)
        plain = VFIODevice(add_sim_device(fk, iommu="vtd", dirty=False), kernel=fk)
        with dirty.attach(space, be), pytest.warns(DirtyTrackingWarning):
            plain.attach(space, be)
            calls = record_set_calls(fk)
            assert dirty.container is not None and dirty.hwpt is not None
            dirty.container.set_dirty_page_tracking(True)
            assert calls == [(dirty.hwpt.id, uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)]
            plain.detach()


# --- ORing across HWPTs, page sizes -----------------------------------------------------------
pages_st = st.sets(st.integers(0, PAGES - 1), max_size=12)


@settings(max_examples=examples(20), deadline=None)
@given(a=pages_st, b=pages_st)
def test_query_ors_the_hwpts(a: set[int], b: set[int]) -> None:
    t = TwoHwpts(SimKernel())
    try:
        t.c.set_dirty_page_tracking(True)
        dma_write_pages(t.vtd, GPA, sorted(a))
        dma_write_pages(t.mock, GPA, sorted(b))
        assert set_bits(t.c.get_dirty_bitmap(GPA, RAM), PAGES) == a | b
        assert set_bits(t.c.get_dirty_bitmap(GPA, RAM), PAGES) == set()  # read and cleared
    finally:
        t.close()


@pytest.mark.parametrize("page_size", [PAGE, 2 * PAGE, 16 * PAGE, 512 * PAGE])
def test_query_at_any_page_size(page_size: int) -> None:
    t = TwoHwpts(SimKernel())
    try:
        t.c.set_dirty_page_tracking(True)
        a, b = [0, 3, 17, 200], [3, 64, 255]
        dma_write_pages(t.vtd, GPA, a)
        dma_write_pages(t.mock, GPA, b)
        nbits = -(-RAM // page_size)
        got = t.c.get_dirty_bitmap(GPA, RAM, page_size)
        assert set_bits(got, nbits) == {p * PAGE // page_size for p in a + b}
    finally:
        t.close()


def test_query_dirty_ranges_harvests_many_ranges_in_one_call() -> None:
    t = TwoHwpts(SimKernel())
    try:
        t.c.set_dirty_page_tracking(True)
        dma_write_pages(t.vtd, GPA, [1, 40])
        dma_write_pages(t.mock, GPA, [40, 130])
        ranges = [(GPA, 64 * PAGE), (GPA + 64 * PAGE, 64 * PAGE), (GPA + 128 * PAGE, 128 * PAGE)]
        h = t.c.query_dirty_ranges(ranges, PAGE, no_clear=True)
        assert [set_bits(bm, h.nbits(i)) for i, bm in enumerate(h.bitmaps)] == [{1, 40}, set(), {2}]
        again = t.c.query_dirty_ranges(ranges, PAGE)  # NO_CLEAR kept them
        assert bitmap.popcount(again.buffer) == 3
        assert bitmap.popcount(t.c.query_dirty_ranges(ranges, PAGE).buffer) == 0
    finally:
        t.close()


# --- devices that cannot be tracked -------------------------------------------------------------
@only_on_sim
def test_a_device_without_dirty_tracking_makes_every_page_dirty(kernel: Kernel) -> None:
    machine = getattr(kernel, "machine", None)
    if machine is None:
        pytest.skip("needs simulated devices")
    with AddressSpace() as space, IOMMUFDBackend(kernel=kernel) as be:
        space.add_ram(RAM, GPA)
        dirty = VFIODevice(add_sim_device(kernel, iommu="vtd", dirty=True), kernel=kernel)
        plain = VFIODevice(add_sim_device(kernel, iommu="vtd", dirty=False), kernel=kernel)
        with dirty.attach(space, be):
            c = dirty.container
            assert c is not None
            c.set_dirty_page_tracking(True)
            assert c.tracks_all_devices
            assert set_bits(c.get_dirty_bitmap(GPA, RAM), PAGES) == set()
            with pytest.warns(DirtyTrackingWarning), plain.attach(space, be):
                assert c.dirty_pages_supported and not c.tracks_all_devices
                # The plain device may have written anywhere: everything is reported.
                assert set_bits(c.get_dirty_bitmap(GPA, RAM), PAGES) == set(range(PAGES))
            assert c.tracks_all_devices


def test_dirty_bits_are_per_iopte() -> None:
    """With large IOPTEs allowed (the mock IOMMU has ones of 512 mock pages, used where the
    guest and host addresses are both aligned), a write dirties its whole IOPTE: the report
    may be coarser than what was written, never smaller."""
    t = TwoHwpts(SimKernel(), huge_pages=True)
    try:
        t.c.set_dirty_page_tracking(True)
        dma_write_pages(t.mock, GPA, [7])
        huge = 512 * (PAGE // 2) // PAGE  # host pages of one MOCK_HUGE_PAGE_SIZE IOPTE
        got = set_bits(t.c.get_dirty_bitmap(GPA, RAM), PAGES)
        assert {7} <= got <= set(range(huge))
        assert got in ({7}, set(range(huge)))  # one small IOPTE, or the whole large one
    finally:
        t.close()
