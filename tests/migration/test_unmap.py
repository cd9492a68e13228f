"""No lost writes on unmap: a range unmapped while tracking is on hands its dirty bits to the
tracker first, and the next sync reports them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastmap._tools.mock_device import MockDevice
from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.container import Container
from fastmap.lifecycle.device import VFIODevice
from fastmap.lifecycle.vfio_legacy import LegacyContainer
from fastmap.migration import DirtyTracker, UntrackedDevicesWarning
from tests.facilities import only_on_sim
from tests.lifecycle.faulty import FaultyKernel
from tests.migration.conftest import (
    GPA,
    PAGE,
    add_sim_device,
    dirty_edu,
    dma_write_pages,
    set_bits,
    sim_only,
)

SIZE = 1 << 20
PAGES = SIZE // PAGE
HALF = SIZE // 2


def split(c: Container, gpa: int, va: int) -> None:
    """Map the block at gpa as two halves, as a vIOMMU maps pieces (neither iommufd nor
    Type1 v2 unmaps part of a mapping)."""
    c.dma_unmap(gpa, SIZE)
    c.dma_map(va, HALF, gpa)
    c.dma_map(va + HALF, HALF, gpa + HALF)


@pytest.fixture
def tracked(kernel: Kernel) -> Iterator[tuple[AddressSpace, VFIODevice]]:
    """A simulated VT-d edu with dirty tracking, two RAM blocks, 4 KiB IOPTEs."""
    with dirty_edu(kernel) as (space, dev):
        space.add_ram(SIZE, GPA, name="a")
        space.add_ram(SIZE, GPA + SIZE, name="b")
        dev.enable_dma()
        yield space, dev


@only_on_sim
def test_dma_unmap_keeps_the_writes(tracked: tuple[AddressSpace, VFIODevice]) -> None:
    """A vIOMMU-style unmap of half a block that the guest keeps: its pages written before
    the unmap are reported by the next sync, merged with the rest of the block's."""
    space, dev = tracked
    c = dev.container
    assert c is not None
    a = space.blocks[0]
    split(c, a.gpa, a.va)
    with DirtyTracker(space) as t:
        dma_write_pages(dev, a.gpa, [3, 200, 255])  # 3 in the first half, 200/255 in the second
        c.dma_unmap(a.gpa + HALF, HALF)
        r = t.sync()
        assert set_bits(r.for_block(a).bitmap, PAGES) == {3, 200, 255}
        assert r.removed == []
        assert t.sync().dirty_pages == 0
        c.dma_map(a.va + HALF, HALF, a.gpa + HALF)


@only_on_sim
def test_without_the_harvest_the_writes_are_gone(
    tracked: tuple[AddressSpace, VFIODevice],
) -> None:
    """Control: the kernel forgets an unmapped range's dirty bits, so a query after the
    unmap finds nothing there. This is what the tracker's unmap harvest prevents."""
    space, dev = tracked
    c = dev.container
    assert c is not None
    a = space.blocks[0]
    split(c, a.gpa, a.va)
    c.set_dirty_page_tracking(True)
    dma_write_pages(dev, a.gpa, [3, 200])
    c.dma_unmap(a.gpa + HALF, HALF)
    assert set_bits(c.get_dirty_bitmap(a.gpa, SIZE), PAGES) == {3}
    c.set_dirty_page_tracking(False)
    c.dma_map(a.va + HALF, HALF, a.gpa + HALF)


@only_on_sim
def test_removed_block_reports_its_writes(tracked: tuple[AddressSpace, VFIODevice]) -> None:
    space, dev = tracked
    a, b = space.blocks
    with DirtyTracker(space) as t:
        dma_write_pages(dev, a.gpa, [1])
        dma_write_pages(dev, b.gpa, [7, 8])
        space.remove_ram(b)  # region_del: the container unmaps it
        r = t.sync()
        assert [d.block for d in r.blocks] == [a]
        assert set_bits(r.for_block(a).bitmap, PAGES) == {1}
        assert len(r.removed) == 1 and r.removed[0].block is b
        assert r.removed[0].page_ranges.tolist() == [[7, 2]]
        assert t.sync().removed == []


@only_on_sim
def test_last_device_detaching_while_tracking_reports_everything(kernel: Kernel) -> None:
    """The container goes with its last device: its HWPT (and dirty bits) are freed before
    the RAM is unmapped, so the unmap harvest can only say "all of it"."""
    sim_only(kernel)
    with AddressSpace() as space, IOMMUFDBackend(kernel=kernel) as be:
        space.add_ram(SIZE, GPA)
        dev = VFIODevice(add_sim_device(kernel, iommu="vtd", dirty=True), kernel=kernel)
        dev.attach(space, be)
        dev.enable_dma()
        t = DirtyTracker(space)
        t.start()
        dma_write_pages(dev, GPA, [5])
        dev.detach()
        r = t.sync()
        assert t.containers == [] and r.dirty_pages == PAGES
        t.stop()


def test_legacy_unmap_returns_the_bitmap(kernel: Kernel, edu: str) -> None:
    """Type1: UNMAP_DMA with GET_DIRTY_BITMAP (QEMU's vfio_dma_unmap_bitmap) gives the bits
    in the unmap call itself; Type1 reports every mapped page of a passthrough group."""
    fk = FaultyKernel(kernel)
    with AddressSpace() as space:
        space.add_ram(SIZE, 0x100000)
        with VFIODevice(edu, kernel=fk).attach(space, "legacy") as dev:
            c = dev.container
            assert isinstance(c, LegacyContainer)
            split(c, 0x100000, space.blocks[0].va)
            with (
                pytest.warns(UntrackedDevicesWarning, match="Type1"),
                DirtyTracker(space) as t,
            ):
                t.sync()
                start = len(fk.log)
                c.dma_unmap(0x100000 + HALF, HALF)
                assert [e.split()[0] for e in fk.log[start:]] == ["VFIO_IOMMU_UNMAP_DMA"]
                r = t.sync()
                # The kernel's answer for the unmapped half (every page), then the rest.
                assert set_bits(r.blocks[0].bitmap, PAGES) == set(range(PAGES))
            c.dma_map(space.blocks[0].va + HALF, HALF, 0x100000 + HALF)


def test_mock_device_unmap(kernel: Kernel, mock_ok: None) -> None:
    with AddressSpace() as space, IOMMUFDBackend(kernel=kernel) as be:
        space.add_ram(SIZE, GPA)
        with MockDevice(kernel=kernel).attach(space, be) as dev, DirtyTracker(space) as t:
            c = dev.container
            assert c is not None
            split(c, GPA, space.blocks[0].va)
            for p in (2, 130, 250):
                dev.emulate_dma_write(GPA + p * PAGE, b"before unmap")
            c.dma_unmap(GPA + HALF, HALF)
            assert set_bits(t.sync().blocks[0].bitmap, PAGES) == {2, 130, 250}
            c.dma_map(space.blocks[0].va + HALF, HALF, GPA + HALF)
            dev.emulate_dma_write(GPA + 140 * PAGE, b"after remap")
            assert set_bits(t.sync().blocks[0].bitmap, PAGES) == {140}
