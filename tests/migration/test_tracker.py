"""fastmap.migration.DirtyTracker: start/stop over containers, per-block syncs, and the
cases where it must report everything rather than under-report."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import numpy as np
import pytest

from fastmap import bitmap
from fastmap._tools.mock_device import MockDevice
from fastmap.errors import DirtyTrackingWarning, KernelError
from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice
from fastmap.lifecycle.vfio_iommufd import IommufdContainer
from fastmap.lifecycle.vfio_legacy import LegacyContainer
from fastmap.migration import DirtyTracker, UntrackedDevicesWarning
from tests.facilities import only_on_sim
from tests.lifecycle.faulty import FaultyKernel
from tests.migration.conftest import (
    GPA,
    PAGE,
    add_sim_device,
    dma_write_pages,
    set_bits,
    sim_only,
)

A_SIZE, B_SIZE = 1 << 20, 512 << 10
B_GPA = GPA + (2 << 20)


def dirty_device(kernel: Kernel, space: AddressSpace, be: IOMMUFDBackend) -> VFIODevice:
    """A simulated edu behind VT-d with dirty tracking, RAM mapped with 4 KiB IOPTEs."""
    dev = VFIODevice(add_sim_device(kernel, iommu="vtd", dirty=True), kernel=kernel)
    dev.attach(space, be)
    c = dev.container
    assert isinstance(c, IommufdContainer)
    if not space.blocks:
        c.ioas.huge_pages = False
    dev.enable_dma()
    return dev


@pytest.fixture
def guest(kernel: Kernel) -> Iterator[tuple[AddressSpace, IOMMUFDBackend, VFIODevice]]:
    """Two RAM blocks and a dirty-tracking edu (simulated kernel)."""
    sim_only(kernel)
    with AddressSpace("guest") as space, IOMMUFDBackend(kernel=kernel) as be:
        dev = dirty_device(kernel, space, be)
        space.add_ram(A_SIZE, GPA, name="a")
        space.add_ram(B_SIZE, B_GPA, name="b")
        yield space, be, dev
        dev.detach()


# --- syncing ----------------------------------------------------------------------------------
@only_on_sim
def test_sync_reports_each_blocks_pages(
    guest: tuple[AddressSpace, IOMMUFDBackend, VFIODevice],
) -> None:
    space, _, dev = guest
    a, b = space.blocks
    with DirtyTracker(space) as t:
        assert t.containers == [dev.container]
        first = t.sync()
        assert first.dirty_pages == 0 and first.removed == []
        dma_write_pages(dev, a.gpa, [0, 1, 2, 100])
        dma_write_pages(dev, b.gpa, [127])
        r = t.sync()
        ra, rb = r.for_block(a), r.for_block(b)
        assert set_bits(ra.bitmap, ra.nbits) == {0, 1, 2, 100}
        assert ra.page_ranges.tolist() == [[0, 3], [100, 1]]
        assert ra.byte_ranges.tolist() == [[0, 3 * PAGE], [100 * PAGE, PAGE]]
        assert rb.gpa_ranges.tolist() == [[b.gpa + 127 * PAGE, PAGE]]
        assert r.dirty_pages == 5 and r.dirty_bytes == 5 * PAGE
        assert not any(d.all_dirty for d in r)
        assert t.sync().dirty_pages == 0  # read and cleared
    assert t.containers == [] and not dev.container.dirty_tracking  # type: ignore[union-attr]


@only_on_sim
@pytest.mark.parametrize("page_size", [2 * PAGE, 64 * PAGE, 512 * PAGE])
def test_sync_at_a_coarser_page_size(
    guest: tuple[AddressSpace, IOMMUFDBackend, VFIODevice], page_size: int
) -> None:
    space, _, dev = guest
    a, _ = space.blocks
    written = [0, 5, 200]
    with DirtyTracker(space, page_size=page_size) as t:
        dma_write_pages(dev, a.gpa, written)
        got = t.sync().for_block(a)
        assert got.nbits == -(-a.length // page_size)
        assert set_bits(got.bitmap, got.nbits) == {p * PAGE // page_size for p in written}


@only_on_sim
def test_a_block_added_while_tracking_is_all_dirty(
    guest: tuple[AddressSpace, IOMMUFDBackend, VFIODevice],
) -> None:
    space, _, dev = guest
    with DirtyTracker(space) as t:
        c = space.add_ram(256 << 10, GPA + (4 << 20), name="c")
        dma_write_pages(dev, GPA, [9])
        r = t.sync()
        assert r.for_block(c).all_dirty and r.for_block(c).dirty_pages == 64
        assert "added" in r.for_block(c).reason
        assert set_bits(r.for_block(space.blocks[0]).bitmap, 256) == {9}
        assert t.sync().dirty_pages == 0


# --- start / stop across containers -----------------------------------------------------------
@only_on_sim
def test_start_is_all_or_nothing_across_containers(fk: FaultyKernel) -> None:
    """Two containers (two backends in one space); the second start fails: the first is
    stopped again, the error propagates, the tracker is not started."""
    sim_only(fk)
    with (
        AddressSpace() as space,
        IOMMUFDBackend(kernel=fk) as be1,
        IOMMUFDBackend(kernel=fk) as be2,
    ):
        d1 = dirty_device(fk, space, be1)
        d2 = dirty_device(fk, space, be2)
        space.add_ram(A_SIZE, GPA)
        assert d1.container is not d2.container and len(space.containers) == 2
        t = DirtyTracker(space)
        fk.fail("IOMMU_HWPT_SET_DIRTY_TRACKING", errno.EIO, nth=2)
        with pytest.raises(KernelError):
            t.start()
        assert not t.started and t.containers == []
        assert not any(c.dirty_tracking for c in space.containers)
        assert all(c.unmap_dirty_sinks == [] for c in space.containers)
        with t:  # works once the kernel does
            dma_write_pages(d1, GPA, [1])
            dma_write_pages(d2, GPA, [2])
            assert set_bits(t.sync().blocks[0].bitmap, 256) == {1, 2}
        d2.detach()
        d1.detach()


@only_on_sim
def test_failed_stop_keeps_tracking_and_reports_everything_next(
    guest: tuple[AddressSpace, IOMMUFDBackend, VFIODevice], kernel: Kernel
) -> None:
    space, _, dev = guest
    fk = FaultyKernel(kernel)
    dev.container.backend.kernel = fk  # type: ignore[union-attr]
    t = DirtyTracker(space)
    t.start()
    fk.fail("IOMMU_HWPT_SET_DIRTY_TRACKING", errno.EIO)
    with pytest.raises(KernelError):
        t.stop()
    # QEMU's rollback re-enabled tracking, which cleared the bits: all must be resent.
    assert t.started and dev.container.dirty_tracking  # type: ignore[union-attr]
    r = t.sync()
    assert all(d.all_dirty for d in r) and r.dirty_pages == (A_SIZE + B_SIZE) // PAGE
    dma_write_pages(dev, GPA, [3])
    assert set_bits(t.sync().blocks[0].bitmap, 256) == {3}
    t.stop()
    assert not t.started


# --- devices that cannot be tracked, devices that come and go ---------------------------------
@only_on_sim
def test_untracked_device_warns_and_reports_all(
    guest: tuple[AddressSpace, IOMMUFDBackend, VFIODevice], kernel: Kernel
) -> None:
    space, be, _ = guest
    plain = VFIODevice(add_sim_device(kernel, iommu="vtd", dirty=False), kernel=kernel)
    with pytest.warns(DirtyTrackingWarning):
        plain.attach(space, be)
    with pytest.warns(UntrackedDevicesWarning, match=plain.name):
        t = DirtyTracker(space)
        t.start()
    r = t.sync()
    assert all(d.all_dirty and "cannot track" in d.reason for d in r)
    assert r.dirty_pages == (A_SIZE + B_SIZE) // PAGE
    plain.detach()
    # Its HWPT (and whatever it wrote since the last sync) is gone: all dirty once more...
    r = t.sync()
    assert all(d.all_dirty and "came or went" in d.reason for d in r)
    # ...then precise again.
    assert t.sync().dirty_pages == 0
    t.stop()


@only_on_sim
def test_device_attached_while_tracking(
    guest: tuple[AddressSpace, IOMMUFDBackend, VFIODevice], kernel: Kernel
) -> None:
    """A dirty-capable device that gets a new HWPT after start: its writes until the next
    sync are unknown (all dirty), then its HWPT tracks like the others."""
    space, be, dev = guest
    space.remove_ram(space.blocks[1])  # the mock IOMMU's aperture holds block a only
    with DirtyTracker(space) as t:
        mock = VFIODevice(add_sim_device(kernel, iommu="mock", dirty=True), kernel=kernel)
        with mock.attach(space, be):
            mock.enable_dma()
            assert len(dev.container.hwpts) == 2  # type: ignore[union-attr]
            dma_write_pages(mock, GPA, [4])
            assert all(d.all_dirty for d in t.sync())
            dma_write_pages(mock, GPA, [6])
            dma_write_pages(dev, GPA, [8])
            r = t.sync()
            assert not r.blocks[0].all_dirty and set_bits(r.blocks[0].bitmap, 256) == {6, 8}


# --- legacy Type1 -----------------------------------------------------------------------------
def test_legacy_container(kernel: Kernel, edu: str) -> None:
    """Type1 tracking: VFIO_IOMMU_DIRTY_PAGES START / GET_BITMAP / STOP; with a passthrough
    group the kernel reports every mapped page dirty on every query."""
    fk = FaultyKernel(kernel)
    with AddressSpace() as space:
        space.add_ram(A_SIZE, GPA)
        with VFIODevice(edu, kernel=fk).attach(space, "legacy") as dev:
            c = dev.container
            assert isinstance(c, LegacyContainer) and c.dirty_pages_supported
            start = len(fk.log)
            with pytest.warns(UntrackedDevicesWarning, match="Type1"), DirtyTracker(space) as t:
                r = t.sync()
                # The kernel's answer is every page; the tracker says so, and why.
                assert r.blocks[0].all_dirty and "Type1" in r.blocks[0].reason
                assert r.dirty_pages == A_SIZE // PAGE
            names = [e.split()[0] for e in fk.log[start:]]
            assert names == ["VFIO_IOMMU_DIRTY_PAGES"] * 3  # start, get, stop
            assert not c.dirty_tracking


# --- the selftest mock device: the same on the real kernel and the simulator ------------------
def test_mock_device_tracking(kernel: Kernel, mock_ok: None) -> None:
    with AddressSpace() as space, IOMMUFDBackend(kernel=kernel) as be:
        space.add_ram(A_SIZE, GPA, name="a")
        space.add_ram(B_SIZE, B_GPA, name="b")
        with MockDevice(kernel=kernel).attach(space, be) as dev:
            assert dev.hwpt is not None and dev.hwpt.dirty_tracking
            assert dev.hiod is not None and dev.hiod.type_name == "selftest"
            a, b = space.blocks
            with DirtyTracker(space) as t:
                assert t.sync().dirty_pages == 0
                rng = np.random.default_rng(7)
                want_a = {int(p) for p in rng.choice(256, 40, replace=False)}
                for p in sorted(want_a):
                    dev.emulate_dma_write(a.gpa + p * PAGE + 16, b"written")
                dev.emulate_dma_write(b.gpa + PAGE - 2, b"span")  # crosses into page 1
                r = t.sync()
                assert set_bits(r.for_block(a).bitmap, 256) == want_a
                assert set_bits(r.for_block(b).bitmap, 128) == {0, 1}
                assert a.read(sorted(want_a)[0] * PAGE + 16, 7) == b"written"
                assert t.sync().dirty_pages == 0
            # Tracking off: writes leave no dirty bits (and none are marked).
            dev.emulate_dma_write(a.gpa, b"x")
            assert not dev.tracking


def test_mock_device_without_dirty_tracking(kernel: Kernel, mock_ok: None) -> None:
    with AddressSpace() as space, IOMMUFDBackend(kernel=kernel) as be:
        space.add_ram(A_SIZE, GPA)
        dirty = MockDevice(kernel=kernel, name="dirty").attach(space, be)
        with pytest.warns(DirtyTrackingWarning, match="plain"):
            plain = MockDevice(kernel=kernel, dirty_tracking=False, name="plain")
            plain.attach(space, be)
        c = dirty.container
        assert c is plain.container and isinstance(c, IommufdContainer) and len(c.hwpts) == 2
        with pytest.warns(UntrackedDevicesWarning):
            t = DirtyTracker(space)
            t.start()
        dirty.emulate_dma_write(GPA, b"x")
        r = t.sync()
        assert r.blocks[0].all_dirty and r.dirty_pages == A_SIZE // PAGE
        t.stop()
        plain.detach()
        dirty.detach()
        assert space.containers == []


def test_device_without_dirty_tracking_on_this_kernel(
    kernel: Kernel, edu: str, hwpt_alloc: bool
) -> None:
    """The plain edu (on the VM: behind virtio-iommu, which has no dirty tracking): no HWPT
    can track, so every page is reported, with the warning."""
    with AddressSpace() as space, IOMMUFDBackend(kernel=kernel) as be:
        space.add_ram(A_SIZE, 0x100000)
        with VFIODevice(edu, kernel=kernel).attach(space, be, hwpt_alloc=hwpt_alloc) as dev:
            c = dev.container
            assert c is not None and not c.tracks_all_devices
            with pytest.warns(UntrackedDevicesWarning), DirtyTracker(space) as t:
                r = t.sync()
                assert r.blocks[0].all_dirty
                assert bitmap.popcount(r.blocks[0].bitmap, r.blocks[0].nbits) == A_SIZE // PAGE


def test_stop_after_the_legacy_container_is_gone(kernel: Kernel, edu: str) -> None:
    """A Type1 container closes with its last device; stopping later must not touch it."""
    with AddressSpace() as space:
        space.add_ram(A_SIZE, GPA)
        dev = VFIODevice(edu, kernel=kernel).attach(space, "legacy")
        t = DirtyTracker(space)
        with pytest.warns(UntrackedDevicesWarning, match="Type1"):
            t.start()
        dev.detach()
        assert space.containers == []
        t.stop()
        assert not t.started and t.containers == []
