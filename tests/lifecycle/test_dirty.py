"""Dirty-page tracking through the containers (QEMU's migration path, §4.5)."""

from __future__ import annotations

import errno
import mmap

import numpy as np
import numpy.typing as npt
import pytest

from fastmap.errors import KernelError
from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice
from fastmap.lifecycle.vfio_iommufd import IommufdContainer
from fastmap.lifecycle.vfio_legacy import LegacyContainer
from tests.facilities import only_on_sim
from tests.lifecycle.conftest import MOCK_RAM_GPA, RAM_GPA, add_sim_device, load_example
from tests.lifecycle.faulty import FaultyKernel

PAGE = mmap.PAGESIZE
RAM_SIZE = 2 << 20
EDU_BUFFER = 0x40000


def bits(bitmap: npt.NDArray[np.uint64], count: int) -> list[int]:
    """Indices of the set bits among the first `count`."""
    flat = np.unpackbits(bitmap.view(np.uint8), bitorder="little")[:count]
    return [int(i) for i in np.flatnonzero(flat)]


def device_writes(dev: VFIODevice, gpa: int, n: int = 64) -> None:
    load_example().Edu(dev, timeout=10.0).dma(EDU_BUFFER, gpa, n, to_ram=True)


@only_on_sim
def test_iommufd_dirty_pages_follow_device_writes(kernel: Kernel, space: AddressSpace) -> None:
    bdf = add_sim_device(kernel, iommu="vtd", dirty=True)
    with (
        IOMMUFDBackend(kernel=kernel) as be,
        VFIODevice(bdf, kernel=kernel).attach(space, be) as dev,
    ):
        c = dev.container
        assert isinstance(c, IommufdContainer) and c.dirty_pages_supported
        dev.enable_dma()
        c.set_dirty_page_tracking(True)
        pages = RAM_SIZE // PAGE
        assert bits(c.get_dirty_bitmap(RAM_GPA, RAM_SIZE), pages) == []
        written = [3, 17, 511]
        for p in written:
            device_writes(dev, RAM_GPA + p * PAGE + 8)
        # Reading guest memory (RAM -> device) dirties nothing.
        load_example().Edu(dev, timeout=10.0).dma(RAM_GPA, EDU_BUFFER, 64, to_ram=False)
        assert bits(c.get_dirty_bitmap(RAM_GPA, RAM_SIZE), pages) == written
        assert bits(c.get_dirty_bitmap(RAM_GPA, RAM_SIZE), pages) == []  # read and cleared
        c.set_dirty_page_tracking(False)
        assert not c.dirty_tracking


def test_container_without_dirty_tracking_reports_everything(
    kernel: Kernel, edu: str, space: AddressSpace, hwpt_alloc: bool
) -> None:
    """QEMU marks the whole range dirty when the container cannot track."""
    with (
        IOMMUFDBackend(kernel=kernel) as be,
        VFIODevice(edu, kernel=kernel).attach(space, be, hwpt_alloc=hwpt_alloc) as dev,
    ):
        c = dev.container
        assert c is not None
        if c.dirty_pages_supported:
            pytest.skip("this IOMMU tracks dirty pages")
        pages = 100
        assert bits(c.get_dirty_bitmap(RAM_GPA, pages * PAGE), 128) == list(range(pages))


def test_legacy_type1_reports_every_mapped_page_dirty(
    kernel: Kernel, edu: str, space: AddressSpace
) -> None:
    with VFIODevice(edu, kernel=kernel).attach(space, "legacy") as dev:
        c = dev.container
        assert isinstance(c, LegacyContainer)
        assert c.dirty_pages_supported and c.dirty_pgsizes & PAGE
        c.set_dirty_page_tracking(True)
        pages = RAM_SIZE // PAGE
        assert bits(c.get_dirty_bitmap(RAM_GPA, RAM_SIZE), pages) == list(range(pages))
        c.set_dirty_page_tracking(False)


@only_on_sim
def test_set_dirty_tracking_rolls_back_on_failure(fk: FaultyKernel) -> None:
    """Two dirty-tracking HWPTs (VT-d and mock); the second SET fails: both are set back
    and the error propagates (QEMU's iommufd_set_dirty_page_tracking)."""
    vtd = add_sim_device(fk, iommu="vtd", dirty=True)
    mock = add_sim_device(fk, iommu="mock", dirty=True)
    with AddressSpace() as space, IOMMUFDBackend(kernel=fk) as be:
        space.add_ram(1 << 20, MOCK_RAM_GPA)
        dv = VFIODevice(vtd, kernel=fk).attach(space, be)
        dm = VFIODevice(mock, kernel=fk).attach(space, be)
        c = dv.container
        assert isinstance(c, IommufdContainer) and len(c.hwpts) == 2
        assert all(h.dirty_tracking for h in c.hwpts)
        fk.fail("IOMMU_HWPT_SET_DIRTY_TRACKING", errno.EIO, nth=2)
        start = len(fk.log)
        with pytest.raises(KernelError):
            c.set_dirty_page_tracking(True)
        first, second = (h.id for h in c.hwpts)
        calls = fk.log[start:]
        assert calls[0].endswith(f"hwpt_id={first}") and "INJECTED" in calls[1]
        assert [e.rsplit(" ", 1)[1] for e in calls[2:]] == [
            f"hwpt_id={first}",
            f"hwpt_id={second}",
        ]
        assert not c.dirty_tracking
        dm.detach()
        dv.detach()
