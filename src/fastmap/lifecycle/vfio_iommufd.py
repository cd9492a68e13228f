"""Attaching a VFIO device through IOMMUFD: a cdev bound to an iommufd, its HWPTs.

This is QEMU 10.0's hw/vfio/iommufd.c, step by step (attach, in order; a failing step
undoes exactly the steps before it):

1. open the cdev: `<sysfsdev>/vfio-dev/vfioN/dev` gives major:minor, /dev/vfio/devices/
   vfioN is opened and must be that char device (else /dev/char/M:m is tried);
2. `backend.connect()`, then VFIO_DEVICE_BIND_IOMMUFD (the dev_id);
3. realize the HostIOMMUDevice from IOMMU_GET_HW_INFO;
4. try every container of the address space on the same backend: attach there (errors
   only skip to the next container);
5. otherwise a new container: IOMMU_IOAS_ALLOC, attach to an allocated HWPT (what QEMU
   calls autodomains_get; fastmap keeps "auto domain" for the kernel-made kind): reuse one of
   the container's HWPTs, EINVAL meaning "incompatible, try the next"; else HWPT_ALLOC,
   with DIRTY_TRACKING when the IOMMU has it, and attach to it), learn the IOVA ranges
   (two IOAS_IOVA_RANGES calls; on failure warn and assume 64 bits), register the memory
   listener, which maps all guest RAM through the batch engine. (`hwpt_alloc=False`
   attaches to the IOAS instead and lets the kernel make an auto domain: see IommufdOps.)
6. VFIO_DEVICE_GET_INFO.

Detach, in QEMU's order: unlink the device, DETACH_IOMMUFD_PT (a failure is only logged),
free its HWPT when it was the HWPT's last device, destroy the container when it was the
container's last device (unmap all RAM, destroy the IOAS), `backend.disconnect()`, and
last close the device fd (which unbinds it).

Not mirrored: KVM device registration (no KVM here), RAM-discard coordination, CPR.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fastmap import uapi
from fastmap._unwind import Unwind
from fastmap.allocator import IovaRange
from fastmap.bitmap import words_for_length
from fastmap.dirty import DirtyHarvester, Harvest
from fastmap.errors import (
    DeviceMismatchError,
    DeviceNotFoundError,
    DirtyTrackingWarning,
    IovaRangesFallbackWarning,
    KernelError,
)
from fastmap.ioas import Ioas
from fastmap.kernel import Fd, Kernel
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.container import FULL_IOVA_RANGE, Container
from fastmap.lifecycle.host_iommu_device import HostIOMMUDevice
from fastmap.lifecycle.sysfs import Sysfs
from fastmap.prot import Prot
from fastmap.ram import PAGE_SIZE, RamBlock

if TYPE_CHECKING:
    from fastmap.lifecycle.address_space import AddressSpace
    from fastmap.lifecycle.device import VFIODevice

log = logging.getLogger("fastmap.vfio")


@dataclass(eq=False)
class Hwpt:
    """A HWPT of a container (allocated, or the kernel's auto domain), shared by the devices
    it suits."""

    id: int
    flags: int
    devices: list[VFIODevice] = field(default_factory=list)
    #: An auto domain: created by the kernel for an attach to the IOAS (hwpt_alloc=False);
    #: the kernel destroys it with its last device, so it is never freed from here.
    auto_domain: bool = False

    @property
    def dirty_tracking(self) -> bool:
        return bool(self.flags & uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)


class IommufdContainer(Container):
    """An IOAS of an IOMMUFD backend, with the HWPTs its devices are attached to."""

    def __init__(self, space: AddressSpace, backend: IOMMUFDBackend, ioas: Ioas) -> None:
        super().__init__(space)
        self.backend = backend
        self.ioas = ioas
        #: The HWPTs its devices are attached to (allocated ones and auto domains), newest
        #: first.
        self.hwpts: list[Hwpt] = []
        self._harvester: DirtyHarvester | None = None

    def drop_device_hwpt(self, dev: VFIODevice) -> None:
        """Drop a detached device from its HWPT; the HWPT goes with its last device (an
        auto domain is the kernel's to destroy, so it is only forgotten)."""
        hwpt = dev.hwpt
        if hwpt is None:
            return
        hwpt.devices.remove(dev)
        dev.hwpt = None
        if not hwpt.devices:
            self.hwpts.remove(hwpt)
            if not hwpt.auto_domain:
                self.backend.free_id(hwpt.id)

    @property
    def ioas_id(self) -> int:
        return self.ioas.id

    # --- mapping: the batch engine -------------------------------------------------------
    def _map_sections(self, sections: Sequence[RamBlock]) -> None:
        done: list[RamBlock] = []
        try:
            for prot in sorted({s.prot for s in sections}):
                batch = [s for s in sections if s.prot == prot]
                if not batch:
                    continue
                self.ioas.map_batch(
                    [s.va for s in batch],
                    [s.length for s in batch],
                    [s.gpa for s in batch],
                    prot=prot,
                    keep=[s.lease() for s in batch],  # the block cannot close while mapped
                )
                done.extend(batch)
        except BaseException:
            if done:
                self.ioas.unmap_batch([s.gpa for s in done], [s.length for s in done])
            raise

    def dma_map(self, va: int, length: int, iova: int, prot: Prot = Prot.RW) -> None:
        self.ioas.map(va, length, iova, prot=prot)

    def dma_unmap(self, iova: int, length: int) -> None:
        self._unmapping(iova, length)
        try:
            self.ioas.unmap(iova, length)
        except KernelError as e:
            # As QEMU's backend: unmapping what is not mapped is not an error.
            if e.errno != _errno.ENOENT or not self.backend.unmap_enoent_ok:
                raise

    # --- dirty tracking over the container's dirty-capable HWPTs -----------------------------
    def set_dirty_page_tracking(self, start: bool) -> None:
        """Start or stop tracking on every DIRTY_TRACKING HWPT; if one fails, all are set
        back (QEMU's rollback) and the error propagates."""
        done: list[Hwpt] = []
        try:
            for hwpt in self.hwpts:
                if hwpt.dirty_tracking:
                    self.backend.set_dirty_tracking(hwpt.id, start)
                    done.append(hwpt)
        except KernelError:
            for hwpt in self.hwpts:
                if hwpt.dirty_tracking:
                    try:
                        self.backend.set_dirty_tracking(hwpt.id, not start)
                    except KernelError as e:
                        log.error("rolling back dirty tracking of HWPT %d: %s", hwpt.id, e)
            raise
        self.dirty_tracking = start

    @property
    def tracks_all_devices(self) -> bool:
        """Every HWPT (so every device) has dirty tracking; False with no HWPT left, since a
        device that left took its HWPT's dirty bits with it."""
        return bool(self.hwpts) and all(h.dirty_tracking for h in self.hwpts)

    def _query_dirty_bitmap(
        self, iova: int, length: int, bitmap: npt.NDArray[np.uint64], page_size: int = PAGE_SIZE
    ) -> None:
        span = -(-length // page_size) * page_size  # the kernel wants whole pages
        bits = self.query_dirty_ranges([(iova, span)], page_size).buffer
        head = bitmap[: bits.size]
        np.bitwise_or(head, bits, out=head)

    def query_dirty_ranges(
        self,
        ranges: Sequence[tuple[int, int]],
        page_size: int = PAGE_SIZE,
        out: npt.NDArray[np.uint64] | None = None,
        no_clear: bool = False,
    ) -> Harvest:
        """QEMU's query_dirty_bitmap for many ranges at once: each range's bitmap is the OR
        over every DIRTY_TRACKING HWPT, one IOMMU_HWPT_GET_DIRTY_BITMAP per (HWPT, range),
        issued by the C++ harvester without the GIL. Reading clears the dirty bits unless
        `no_clear`. Raw: HWPTs without dirty tracking are not considered here (see
        `tracks_all_devices`, which get_dirty_bitmap applies)."""
        ids = [h.id for h in self.hwpts if h.dirty_tracking]
        harvester = self.harvester()
        if not ids:
            buf = harvester.buffer(ranges, page_size) if out is None else out
            buf[:] = 0
            return _empty_harvest(ranges, page_size, buf)
        return harvester.harvest(ids, ranges, page_size, out=out, no_clear=no_clear)

    def harvester(self) -> DirtyHarvester:
        """The C++ dirty harvester on this container's iommufd."""
        fd = self.backend.fd
        if self._harvester is None or self._harvester.iommufd != fd:
            self._harvester = DirtyHarvester(self.backend.kernel, fd)
        return self._harvester

    # --- lifetime ----------------------------------------------------------------------------
    def destroy(self) -> None:
        """QEMU's iommufd_cdev_container_destroy: only once no device is left: stop
        listening (unmapping all RAM), free the IOAS, leave the address space."""
        if self.devices:
            return
        self.listener_unregister()
        try:
            self.ioas.close()  # unmaps whatever is left, then IOMMU_DESTROY
        except KernelError as e:
            log.error("freeing IOAS %d failed: %s", self.ioas.id, e)
        if self in self.space.containers:
            self.space.containers.remove(self)

    def __repr__(self) -> str:
        return (
            f"<IommufdContainer ioas {self.ioas.id} hwpts {[h.id for h in self.hwpts]} "
            f"devices {[d.name for d in self.devices]}>"
        )


# --- device calls ------------------------------------------------------------------------------
def open_cdev(kernel: Kernel, sysfs: Sysfs, sysfsdev: str) -> Fd:
    """QEMU's iommufd_cdev_getfd + open_cdev: open the device's VFIO cdev and make sure it
    is the char device sysfs names."""
    missing = sysfs.missing_device(sysfsdev)
    if missing is not None:
        raise DeviceNotFoundError(missing)
    try:
        name, devt = sysfs.vfio_cdev(sysfsdev)
    except FileNotFoundError as e:
        raise DeviceNotFoundError(
            f"{sysfsdev} has no vfio-dev/vfioN: the device is not bound to vfio-pci, or the "
            "kernel lacks CONFIG_VFIO_DEVICE_CDEV (use the legacy path: attach without a "
            "backend)"
        ) from e
    paths = [f"/dev/vfio/devices/{name}", f"/dev/char/{devt[0]}:{devt[1]}"]
    first_error: Exception | None = None
    for path in paths:
        try:
            fd = kernel.open_fd(path, os.O_RDWR)
        except KernelError as e:
            first_error = first_error or e
            continue
        try:
            seen = sysfs.devt(fd.number)
        except OSError as e:
            fd.close()
            first_error = first_error or e
            continue
        if seen == devt:
            return fd
        fd.close()
        first_error = first_error or DeviceMismatchError(
            f"{path} is char device {seen}, but {sysfsdev} says {devt[0]}:{devt[1]}"
        )
    assert first_error is not None
    raise first_error


def bind(dev_fd: Fd, backend: IOMMUFDBackend) -> int:
    """VFIO_DEVICE_BIND_IOMMUFD: returns the dev_id."""
    cmd = uapi.new(uapi.vfio_device_bind_iommufd, flags=0, iommufd=backend.fd)
    dev_fd.ioctl(uapi.VFIO_DEVICE_BIND_IOMMUFD, cmd)
    return int(cmd.out_devid)


def attach_pt(dev_fd: Fd, pt_id: int) -> int:
    """VFIO_DEVICE_ATTACH_IOMMUFD_PT: returns the HWPT attached (an IOAS id gives its auto
    HWPT's id back)."""
    cmd = uapi.new(uapi.vfio_device_attach_iommufd_pt, flags=0, pt_id=pt_id)
    dev_fd.ioctl(uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd)
    return int(cmd.pt_id)


def detach_pt(dev_fd: Fd) -> None:
    """VFIO_DEVICE_DETACH_IOMMUFD_PT."""
    dev_fd.ioctl(uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, uapi.new(uapi.vfio_device_detach_iommufd_pt))


def query_iova_ranges(backend: IOMMUFDBackend, ioas_id: int) -> tuple[list[IovaRange], int]:
    """IOMMU_IOAS_IOVA_RANGES the way QEMU asks: first with no room (EMSGSIZE is expected
    and reports the count), then with room for exactly that many."""
    cmd = uapi.new(uapi.iommu_ioas_iova_ranges, ioas_id=ioas_id, num_iovas=0, allowed_iovas=0)
    try:
        backend.kernel.ioctl(backend.fd, uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
    except KernelError as e:
        if e.errno != _errno.EMSGSIZE:
            raise
    n = int(cmd.num_iovas)
    arr = (uapi.iommu_iova_range * max(n, 1))()
    cmd = uapi.new(
        uapi.iommu_ioas_iova_ranges,
        ioas_id=ioas_id,
        num_iovas=n,
        allowed_iovas=ctypes.addressof(arr),
    )
    backend.kernel.ioctl(backend.fd, uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
    ranges = [IovaRange(int(arr[i].start), int(arr[i].last)) for i in range(int(cmd.num_iovas))]
    return ranges, int(cmd.out_iova_alignment)


# --- the ops class ---------------------------------------------------------------------------
class IommufdOps:
    """QEMU's TYPE_VFIO_IOMMU_IOMMUFD: attach/detach a device through an IOMMUFD backend."""

    name = "iommufd"

    def __init__(self, backend: IOMMUFDBackend, *, hwpt_alloc: bool = True) -> None:
        """`hwpt_alloc=False` attaches devices to the IOAS itself and lets the kernel pick or
        create the domain (what QEMU does for mdevs). That works around IOMMU drivers whose
        IOMMU_HWPT_ALLOC domains get their aperture only when attached: with virtio-iommu
        on Linux 6.12 such an IOAS offers the single IOVA 0, so no RAM can be mapped."""
        self.backend = backend
        self.hwpt_alloc = hwpt_alloc

    def attach_device(self, dev: VFIODevice, space: AddressSpace, sysfs: Sysfs) -> None:
        be = self.backend
        kernel = be.kernel
        with Unwind(f"attaching {dev.name} through IOMMUFD") as undo:
            # 1. the device fd. A pre-opened one is closed on failure and on detach too,
            #    as QEMU does: the device owns the fd it was given.
            if dev.passed_fd is None:
                fd = open_cdev(kernel, sysfs, dev.sysfsdev)
            else:
                fd = Fd(kernel, dev.passed_fd)
            dev.fd = fd
            undo.push("close the device fd", lambda: _close_device_fd(dev))

            # 2. connect and bind
            be.connect()
            undo.push("disconnect the backend", be.disconnect)
            dev.dev_id = bind(fd, be)
            dev.backend = be

            # 3. the host IOMMU device (QEMU 10.0 realizes it here: it needs the dev_id)
            dev.hiod = HostIOMMUDevice.from_hw_info(dev.name, be.get_device_info(dev.dev_id), dev)

            # 4. an existing container of this backend in the space
            container = self._join_existing(dev, space)
            if container is None:
                container = self._new_container(dev, space, undo)
            else:
                undo.push(
                    "detach from the container", lambda: self._detach_container(dev, container)
                )
                undo.push("destroy the container if empty", container.destroy)

            # 6. device info
            dev.read_device_info()

        container.devices.insert(0, dev)
        dev.container = container

    def _join_existing(self, dev: VFIODevice, space: AddressSpace) -> IommufdContainer | None:
        for c in space.containers:
            if not isinstance(c, IommufdContainer) or c.backend is not self.backend:
                continue
            try:
                self._attach_container(dev, c)
            except KernelError as e:
                log.debug("%s: cannot join %r: %s", dev.name, c, e)
                continue
            return c
        return None

    def _new_container(
        self, dev: VFIODevice, space: AddressSpace, undo: Unwind
    ) -> IommufdContainer:
        be = self.backend
        ioas = be.alloc_ioas()
        container = IommufdContainer(space, be, ioas)
        space.containers.insert(0, container)
        undo.push("destroy the container", container.destroy)

        self._attach_container(dev, container)
        undo.push("detach from the container", lambda: self._detach_container(dev, container))

        try:
            ranges, alignment = query_iova_ranges(be, ioas.id)
        except KernelError as e:
            warnings.warn(
                IovaRangesFallbackWarning(
                    f"{dev.name}: cannot get the IOVA ranges of IOAS {ioas.id} ({e}); "
                    "falling back to the full 64-bit IOVA range and the host page size"
                ),
                stacklevel=4,
            )
            container.iova_ranges = list(FULL_IOVA_RANGE)
            container.pgsizes = PAGE_SIZE
        else:
            container.iova_ranges = ranges
            container.pgsizes = alignment

        try:
            container.listener_register()
        except KernelError as e:
            if container.iova_ranges == [IovaRange(0, 0)]:
                e.add_note(
                    f"IOAS {ioas.id} offers only IOVA 0: the IOMMU driver gave the allocated "
                    "HWPT no aperture (virtio-iommu on Linux 6.12 does this); attach with "
                    "hwpt_alloc=False to let the kernel create the domain"
                )
            raise
        container.initialized = True
        return container

    def detach_device(self, dev: VFIODevice) -> None:
        container = dev.container
        assert isinstance(container, IommufdContainer)
        be = self.backend
        container.devices.remove(dev)
        dev.container = None
        self._detach_container(dev, container)
        container.destroy()
        be.disconnect()
        _close_device_fd(dev)

    # The container steps, overridable for devices that attach differently (_tools.mock_device).
    def _attach_container(self, dev: VFIODevice, container: IommufdContainer) -> None:
        _attach_container(dev, container, self.hwpt_alloc)

    def _detach_container(self, dev: VFIODevice, container: IommufdContainer) -> None:
        _detach_container(dev, container)


def _empty_harvest(
    ranges: Sequence[tuple[int, int]], page_size: int, buf: npt.NDArray[np.uint64]
) -> Harvest:
    """A harvest with every bit clear (no HWPT to ask)."""
    iovas = np.array([r[0] for r in ranges], np.uint64)
    lengths = np.array([r[1] for r in ranges], np.uint64)
    bitmaps, start = [], 0
    for n in lengths.tolist():
        end = start + words_for_length(n, page_size)
        bitmaps.append(buf[start:end])
        start = end
    return Harvest(page_size, iovas, lengths, bitmaps, buf)


def _attach_container(dev: VFIODevice, container: IommufdContainer, hwpt_alloc: bool) -> None:
    """QEMU's iommufd_cdev_autodomains_get (for a physical device); with `hwpt_alloc`
    False, QEMU's mdev path: ATTACH_PT to the IOAS, the kernel choosing the domain."""
    assert dev.fd is not None and dev.dev_id is not None and dev.hiod is not None
    if not hwpt_alloc:
        _attach_kernel_domain(dev, container)
        return
    for hwpt in container.hwpts:
        try:
            attach_pt(dev.fd, hwpt.id)
        except KernelError as e:
            if e.errno == _errno.EINVAL:
                continue  # this domain does not suit the device: try the next
            raise
        hwpt.devices.insert(0, dev)
        dev.hwpt = hwpt
        dev.iommu_dirty_tracking = hwpt.dirty_tracking
        return

    flags = uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING if dev.hiod.dirty_tracking else 0
    be = container.backend
    hwpt_id = be.alloc_hwpt(dev.dev_id, container.ioas_id, flags)
    try:
        attach_pt(dev.fd, hwpt_id)
    except BaseException:
        be.free_id(hwpt_id)
        raise
    add_allocated_hwpt(container, dev, hwpt_id, flags)


def add_allocated_hwpt(
    container: IommufdContainer, dev: VFIODevice, hwpt_id: int, flags: int
) -> None:
    """Record a HWPT just allocated and attached for `dev` in the container's list, as
    QEMU's autodomains_get does, warning when the container tracks dirty pages and the
    device cannot."""
    hwpt = Hwpt(hwpt_id, flags, [dev])
    container.hwpts.insert(0, hwpt)
    dev.hwpt = hwpt
    dev.iommu_dirty_tracking = hwpt.dirty_tracking
    container.dirty_pages_supported |= dev.iommu_dirty_tracking
    if container.dirty_pages_supported and not dev.iommu_dirty_tracking:
        warnings.warn(
            DirtyTrackingWarning(
                f"IOMMU instance for device {dev.name} doesn't support dirty tracking"
            ),
            stacklevel=6,
        )


def _attach_kernel_domain(dev: VFIODevice, container: IommufdContainer) -> None:
    """Attach to the IOAS: the kernel reuses a compatible auto domain of it or makes one,
    and says which HWPT that is."""
    assert dev.fd is not None
    hwpt_id = attach_pt(dev.fd, container.ioas_id)
    hwpt = next((h for h in container.hwpts if h.id == hwpt_id), None)
    if hwpt is None:
        hwpt = Hwpt(hwpt_id, 0, auto_domain=True)
        container.hwpts.insert(0, hwpt)
    hwpt.devices.insert(0, dev)
    dev.hwpt = hwpt
    dev.iommu_dirty_tracking = False


def _detach_container(dev: VFIODevice, container: IommufdContainer) -> None:
    """QEMU's iommufd_cdev_detach_container: DETACH_PT (failure only logged), then drop the
    device from its HWPT and free the HWPT with its last device."""
    assert dev.fd is not None
    try:
        detach_pt(dev.fd)
    except KernelError as e:
        log.error("detaching %s from its HWPT failed: %s; closing its fd", dev.name, e)
        # Closing the device fd unbinds the device, which detaches it in the kernel:
        # otherwise its HWPT and IOAS stay busy and leak in the iommufd.
        _close_device_fd(dev)
    container.drop_device_hwpt(dev)


def _close_device_fd(dev: VFIODevice) -> None:
    """Close the device fd (the kernel unbinds it from the iommufd) and forget what the
    binding gave."""
    fd, dev.fd = dev.fd, None
    dev.dev_id = None
    dev.hiod = None
    dev.backend = None
    dev.passed_fd = None
    if fd is not None:
        fd.close()
