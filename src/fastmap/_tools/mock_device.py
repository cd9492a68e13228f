"""The iommufd selftest's mock device, attached through the device lifecycle.

Kernels built with CONFIG_IOMMUFD_TEST (the test VM's, and the simulated kernel) offer a
mock device on a mock IOMMU whose domains support dirty tracking. `MockDevice` attaches it
to an `AddressSpace` the way a VFIO device attaches through IOMMUFD (`lifecycle.vfio_iommufd`),
so it lands in the same containers, with the same HWPT choice:

    with IOMMUFDBackend() as be, AddressSpace() as space:
        space.add_ram(64 << 20, gpa=MOCK_APERTURE_START)
        with MockDevice(kernel=be.kernel).attach(space, be) as dev:
            dev.container.set_dirty_page_tracking(True)
            dev.emulate_dma_write(gpa, b"...")     # CPU write + selftest dirty marking

Differences from a VFIO device, all forced by the selftest interface:

* IOMMU_TEST_OP_MOCK_DOMAIN binds and attaches in one call, so "trying a HWPT" creates the
  device on it (EINVAL: it does not suit, try the next). When none suits, the device is
  created on the IOAS (the kernel gives it an auto domain), then, as QEMU does, a HWPT is
  allocated for it (DIRTY_TRACKING when GET_HW_INFO offers it) and the device is moved
  there with MOCK_DOMAIN_REPLACE (the auto domain goes with its last device).
* Destroying the selftest object detaches and unbinds the device (there is no fd).
* The mock device has no DMA engine: the kernel's mock only marks IOPTEs dirty on request
  (IOMMU_TEST_OP_DIRTY). `emulate_dma_write` therefore writes the bytes into guest RAM from
  the CPU and then marks the pages dirty, which is what a device's DMA write would leave
  behind: the data in memory and the IOPTE dirty bits set. Data first, then the mark, so a
  harvest racing with it can never clear the mark of bytes that are not there yet.
* Its IOMMU's aperture is [MOCK_APERTURE_START, MOCK_APERTURE_LAST] (16 MiB to 2 GiB): RAM
  outside it cannot be mapped, so the device cannot join a container that maps such RAM.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from fastmap import bitmap, uapi
from fastmap._unwind import Unwind
from fastmap.errors import KernelError
from fastmap.kernel import Kernel, KernelKind
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice
from fastmap.lifecycle.host_iommu_device import HostIOMMUDevice
from fastmap.lifecycle.vfio_iommufd import Hwpt, IommufdContainer, IommufdOps, add_allocated_hwpt
from fastmap.ram import PAGE_SIZE

if TYPE_CHECKING:
    from fastmap.lifecycle.address_space import AddressSpace
    from fastmap.lifecycle.sysfs import Sysfs

#: The mock IOMMU's IOPTE size (MOCK_IO_PAGE_SIZE): half a host page on 6.12.
MOCK_PAGE_SIZE = PAGE_SIZE // 2


class MockDevice(VFIODevice):
    """A selftest mock device (no sysfs node, no fd, no regions) attached to a container."""

    def __init__(
        self,
        kernel: Kernel | KernelKind | None = None,
        *,
        dirty_tracking: bool = True,
        name: str | None = None,
    ) -> None:
        """`dirty_tracking=False` makes a MOCK_FLAGS_DEVICE_NO_DIRTY device: its IOMMU has
        no dirty tracking, so it gets a HWPT without DIRTY_TRACKING."""
        super().__init__(sysfsdev="", kernel=kernel, name=name or "iommufd_mock")
        self.dirty_capable = dirty_tracking
        #: The selftest object owning the device (destroying it unbinds the device).
        self.stdev_id: int | None = None

    def attach(
        self,
        space: AddressSpace,
        backend: IOMMUFDBackend | Literal["legacy"],
        *,
        hwpt_alloc: bool = True,
    ) -> MockDevice:
        """Attach to `space` through `backend` (a mock device exists only on an iommufd).
        Returns self, a context manager that detaches."""
        if not isinstance(backend, IOMMUFDBackend):
            raise ValueError("a mock device exists only on an iommufd: pass an IOMMUFDBackend")
        if self.ops is not None:
            raise RuntimeError(f"{self.name} is already attached")
        if self._kernel is None and self._kernel_kind is None:
            self._kernel = backend.kernel
        if self.kernel.core is not backend.kernel.core:
            raise ValueError(f"{self.name} is on another kernel than the backend")
        ops = MockOps(backend)
        ops.attach_device(self, space, self.sysfs)
        self.ops = ops
        self.space = space
        return self

    def __enter__(self) -> MockDevice:
        return self

    def __repr__(self) -> str:
        if self.ops is None:
            return f"<MockDevice {self.name} detached>"
        return f"<MockDevice {self.name} stdev {self.stdev_id} dev_id {self.dev_id}>"

    # --- what the device "does" ----------------------------------------------------------------
    def mark_dirty(self, gpas: Sequence[int] | NDArray[np.uint64]) -> int:
        """IOMMU_TEST_OP_DIRTY: mark the IOPTEs of the host pages holding `gpas` dirty in the
        device's HWPT (which must have tracking on). Returns how many mock IOPTEs the kernel
        marked (pages that are not mapped are skipped by the kernel)."""
        hwpt, be = self._hwpt_and_backend()
        pages = np.unique(np.asarray(gpas, dtype=np.uint64) // np.uint64(PAGE_SIZE))
        if pages.size == 0:
            return 0
        first, last = int(pages[0]), int(pages[-1])
        nbits = last - first + 1
        marks = bitmap.from_ranges(
            np.stack([pages - np.uint64(first), np.ones_like(pages)], axis=1), nbits
        )
        # The mock finds an IOPTE as entry (iova / page_size) of its MOCK_PAGE_SIZE table,
        # so only page_size == MOCK_PAGE_SIZE addresses the right entries: two bits a page.
        marks = bitmap.convert(marks, nbits, PAGE_SIZE, MOCK_PAGE_SIZE)
        cmd = uapi.new(uapi.iommu_test_cmd, op=uapi.IOMMU_TEST_OP_DIRTY, id=hwpt.id)
        d = cmd.u.dirty
        d.iova, d.length, d.page_size = first * PAGE_SIZE, nbits * PAGE_SIZE, MOCK_PAGE_SIZE
        d.uptr = marks.ctypes.data
        be.kernel.ioctl(be.fd, uapi.IOMMU_TEST_CMD, cmd)
        return int(cmd.u.dirty.out_nr_dirty)

    def emulate_dma_write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """What a DMA write of `data` at `gpa` leaves behind: the bytes in guest RAM and,
        while the container tracks dirty pages on a dirty-capable HWPT, the IOPTE dirty
        bits of the pages written (the CPU writes, then the selftest marks)."""
        if self.space is None:
            raise RuntimeError(f"{self.name} is not attached")
        self.space.write(gpa, data)
        if self.tracking:
            end = gpa + len(data)
            self.mark_dirty(list(range(gpa - gpa % PAGE_SIZE, end, PAGE_SIZE)))

    @property
    def tracking(self) -> bool:
        """Whether writes now set dirty bits: the HWPT tracks and tracking is on."""
        c = self.container
        return bool(self.hwpt and self.hwpt.dirty_tracking and c and c.dirty_tracking)

    def _hwpt_and_backend(self) -> tuple[Hwpt, IOMMUFDBackend]:
        if self.hwpt is None or self.backend is None:
            raise RuntimeError(f"{self.name} is not attached")
        return self.hwpt, self.backend


class MockOps(IommufdOps):
    """IommufdOps for the selftest mock device: same containers and HWPT sharing, with the
    bind + attach of IOMMU_TEST_OP_MOCK_DOMAIN instead of a cdev."""

    name = "iommufd-mock"

    def attach_device(self, dev: VFIODevice, space: AddressSpace, sysfs: Sysfs) -> None:
        assert isinstance(dev, MockDevice)
        be = self.backend
        with Unwind(f"attaching {dev.name} (iommufd selftest mock device)") as undo:
            be.connect()
            undo.push("disconnect the backend", be.disconnect)
            dev.backend = be
            container = self._join_existing(dev, space)
            if container is None:
                container = self._new_container(dev, space, undo)
        container.devices.insert(0, dev)
        dev.container = container

    def detach_device(self, dev: VFIODevice) -> None:
        container = dev.container
        assert isinstance(container, IommufdContainer)
        container.devices.remove(dev)
        dev.container = None
        self._detach_container(dev, container)
        container.destroy()
        self.backend.disconnect()
        dev.backend = None
        dev.hiod = None

    def _attach_container(self, dev: VFIODevice, container: IommufdContainer) -> None:
        assert isinstance(dev, MockDevice)
        be = self.backend
        dev_flags = 0 if dev.dirty_capable else uapi.MOCK_FLAGS_DEVICE_NO_DIRTY
        for hwpt in container.hwpts:
            try:
                dev.stdev_id, dev.dev_id = _mock_domain(be, hwpt.id, dev_flags)
            except KernelError as e:
                if e.errno == _errno.EINVAL:
                    continue  # this domain does not suit the device: try the next
                raise
            try:
                _realize(dev, be)
            except BaseException:
                be.free_id(dev.stdev_id)
                dev.stdev_id = dev.dev_id = None
                raise
            hwpt.devices.insert(0, dev)
            dev.hwpt = hwpt
            dev.iommu_dirty_tracking = hwpt.dirty_tracking
            return

        stdev, dev_id = _mock_domain(be, container.ioas_id, dev_flags)
        try:
            dev.stdev_id, dev.dev_id = stdev, dev_id
            hiod = _realize(dev, be)
            flags = uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING if hiod.dirty_tracking else 0
            hwpt_id = be.alloc_hwpt(dev_id, container.ioas_id, flags)
            try:
                _mock_replace(be, stdev, hwpt_id)
            except BaseException:
                be.free_id(hwpt_id)
                raise
        except BaseException:
            be.free_id(stdev)
            dev.stdev_id = dev.dev_id = None
            dev.hiod = None
            raise
        add_allocated_hwpt(container, dev, hwpt_id, flags)

    def _detach_container(self, dev: VFIODevice, container: IommufdContainer) -> None:
        """Destroy the selftest object (detaches and unbinds the device), then drop the
        device from its HWPT, freeing the HWPT with its last device."""
        assert isinstance(dev, MockDevice)
        if dev.stdev_id is not None:
            self.backend.free_id(dev.stdev_id)
        dev.stdev_id = dev.dev_id = None
        container.drop_device_hwpt(dev)


def _mock_domain(be: IOMMUFDBackend, pt_id: int, dev_flags: int) -> tuple[int, int]:
    """IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: a mock device bound and attached to `pt_id` (an
    IOAS: an auto domain; a HWPT: that HWPT). Returns (stdev_id, dev_id)."""
    cmd = uapi.new(uapi.iommu_test_cmd, op=uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, id=pt_id)
    cmd.u.mock_domain_flags.dev_flags = dev_flags
    be.kernel.ioctl(be.fd, uapi.IOMMU_TEST_CMD, cmd)
    # The kernel answers through the mock_domain layout for both ops.
    return int(cmd.u.mock_domain.out_stdev_id), int(cmd.u.mock_domain.out_idev_id)


def _mock_replace(be: IOMMUFDBackend, stdev_id: int, pt_id: int) -> None:
    """IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: move the device to another HWPT."""
    cmd = uapi.new(uapi.iommu_test_cmd, op=uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, id=stdev_id)
    cmd.u.mock_domain_replace.pt_id = pt_id
    be.kernel.ioctl(be.fd, uapi.IOMMU_TEST_CMD, cmd)


def _realize(dev: MockDevice, be: IOMMUFDBackend) -> HostIOMMUDevice:
    assert dev.dev_id is not None
    dev.hiod = HostIOMMUDevice.from_hw_info(dev.name, be.get_device_info(dev.dev_id), dev)
    return dev.hiod
