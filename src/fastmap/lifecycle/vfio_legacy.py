"""Attaching a VFIO device the legacy way: IOMMU group + Type1 container (/dev/vfio/vfio).

QEMU 10.0's hw/vfio/container.c, step by step (a failing step undoes exactly the steps
before it):

1. the group number from the sysfs `iommu_group` link; the HostIOMMUDevice (static);
2. the group: reuse it if another device of it is attached (it must be in the same
   address space), else open /dev/vfio/<group>, VFIO_GROUP_GET_STATUS must say VIABLE;
3. a container for the group: VFIO_GROUP_SET_CONTAINER on each Type1 container of the
   address space until one accepts it; else open /dev/vfio/vfio, check
   VFIO_GET_API_VERSION, pick TYPE1v2 over TYPE1 with VFIO_CHECK_EXTENSION,
   SET_CONTAINER, SET_IOMMU, read VFIO_IOMMU_GET_INFO (page sizes and the capability
   chain: IOVA ranges, DMA_AVAIL, migration/dirty), register the memory listener (each
   RAM block is one VFIO_IOMMU_MAP_DMA);
4. VFIO_GROUP_GET_DEVICE_FD with the device name, then VFIO_DEVICE_GET_INFO.

Detach: close the device fd; when the group has no attached device left, leave the
container (the last group stops the listener, which unmaps all RAM, before
UNSET_CONTAINER, then the container fd is closed) and close the group.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fastmap import uapi
from fastmap._unwind import Unwind
from fastmap.allocator import IovaRange
from fastmap.bitmap import words_for_length
from fastmap.errors import (
    ContainerSetupError,
    DeviceNotFoundError,
    GroupNotViableError,
    KernelError,
)
from fastmap.kernel import Fd, Kernel
from fastmap.lifecycle.container import FULL_IOVA_RANGE, Container
from fastmap.lifecycle.host_iommu_device import HostIOMMUDevice
from fastmap.lifecycle.sysfs import Sysfs
from fastmap.prot import Prot
from fastmap.prot import check as check_prot
from fastmap.ram import PAGE_SIZE, RamBlock, RamLease

if TYPE_CHECKING:
    from fastmap.lifecycle.address_space import AddressSpace
    from fastmap.lifecycle.device import VFIODevice

log = logging.getLogger("fastmap.vfio")

CONTAINER_PATH = "/dev/vfio/vfio"
#: QEMU's default when the kernel has no DMA_AVAIL capability (type1's dma_entry_limit).
DEFAULT_DMA_MAX_MAPPINGS = 65535


class VfioGroup:
    """An open IOMMU group (/dev/vfio/<id>) and the devices attached through it."""

    def __init__(self, kernel: Kernel, group_id: int, fd: Fd) -> None:
        self.kernel = kernel
        self.id = group_id
        self.fd = fd
        self.container: LegacyContainer | None = None
        self.devices: list[VFIODevice] = []

    def __repr__(self) -> str:
        return f"<VfioGroup {self.id} fd {self.fd.fd} devices {[d.name for d in self.devices]}>"


# Open groups, per kernel (QEMU's global vfio_group_list): a group may be opened once.
_GROUPS: dict[tuple[int, int], VfioGroup] = {}


def _group_key(kernel: Kernel, group_id: int) -> tuple[int, int]:
    return id(kernel.core), group_id


def open_groups(kernel: Kernel) -> list[VfioGroup]:
    """The groups this process has open on `kernel`."""
    return [g for (k, _), g in _GROUPS.items() if k == id(kernel.core)]


class LegacyContainer(Container):
    """A Type1 container (/dev/vfio/vfio) with its groups."""

    def __init__(self, space: AddressSpace, fd: Fd, iommu_type: int) -> None:
        super().__init__(space)
        self.fd = fd
        self.kernel = fd.kernel
        self.iommu_type = iommu_type
        self.groups: list[VfioGroup] = []
        self._leases: dict[int, tuple[int, RamLease]] = {}  # gpa -> (size, lease)
        self.dma_max_mappings = DEFAULT_DMA_MAX_MAPPINGS
        self.dirty_pgsizes = 0
        self.max_dirty_bitmap_size = 0

    # --- setup: VFIO_IOMMU_GET_INFO ------------------------------------------------------
    def read_info(self) -> None:
        """QEMU's vfio_legacy_setup: page sizes, DMA_AVAIL, IOVA ranges, migration cap."""
        buf = _get_info(self.fd)
        info = uapi.vfio_iommu_type1_info.from_buffer_copy(
            buf[: ctypes.sizeof(uapi.vfio_iommu_type1_info)]
        )
        if info.flags & uapi.VFIO_IOMMU_INFO_PGSIZES:
            self.pgsizes = int(info.iova_pgsizes)
        else:
            self.pgsizes = PAGE_SIZE
        caps = _capabilities(buf, info)
        avail = caps.get(uapi.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)
        if avail is not None:
            self.dma_max_mappings = int(
                uapi.vfio_iommu_type1_info_dma_avail.from_buffer_copy(buf, avail).avail
            )
        ranges_off = caps.get(uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE)
        if ranges_off is not None:
            cap = uapi.vfio_iommu_type1_info_cap_iova_range.from_buffer_copy(buf, ranges_off)
            first = ranges_off + ctypes.sizeof(uapi.vfio_iommu_type1_info_cap_iova_range)
            size = ctypes.sizeof(uapi.vfio_iova_range)
            self.iova_ranges = [
                IovaRange(int(r.start), int(r.end))
                for r in (
                    uapi.vfio_iova_range.from_buffer_copy(buf, first + i * size)
                    for i in range(int(cap.nr_iovas))
                )
            ]
        else:
            self.iova_ranges = list(FULL_IOVA_RANGE)
        mig = caps.get(uapi.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION)
        if mig is not None:
            cap_mig = uapi.vfio_iommu_type1_info_cap_migration.from_buffer_copy(buf, mig)
            if int(cap_mig.pgsize_bitmap) & PAGE_SIZE:
                self.dirty_pages_supported = True
                self.dirty_pgsizes = int(cap_mig.pgsize_bitmap)
                self.max_dirty_bitmap_size = int(cap_mig.max_dirty_bitmap_size)

    # --- mapping: one MAP_DMA per section --------------------------------------------------
    def _map_sections(self, sections: Sequence[RamBlock]) -> None:
        done: list[RamBlock] = []
        try:
            for s in sections:
                self.dma_map(s.va, s.length, s.gpa, s.prot)
                # Type1 has no engine: the container holds the block's lease per mapping.
                self._leases[s.gpa] = (s.length, s.lease())
                done.append(s)
        except BaseException:
            for s in reversed(done):
                try:
                    self.dma_unmap(s.gpa, s.length)
                except KernelError as e:
                    log.error("%r: undoing the map of %r failed: %s", self, s, e)
            raise

    def dma_map(self, va: int, length: int, iova: int, prot: Prot = Prot.RW) -> None:
        prot = check_prot(prot)
        flags = (uapi.VFIO_DMA_MAP_FLAG_READ if prot & Prot.READ else 0) | (
            uapi.VFIO_DMA_MAP_FLAG_WRITE if prot & Prot.WRITE else 0
        )
        cmd = uapi.new(uapi.vfio_iommu_type1_dma_map, flags=flags, vaddr=va, iova=iova, size=length)
        try:
            self.fd.ioctl(uapi.VFIO_IOMMU_MAP_DMA, cmd)
        except KernelError as e:
            # Old kernels said EBUSY for an overlap: QEMU unmaps the old mapping and retries.
            if e.errno != _errno.EBUSY:
                raise
            self.dma_unmap(iova, length)
            self.fd.ioctl(uapi.VFIO_IOMMU_MAP_DMA, cmd)

    def dma_unmap(self, iova: int, length: int) -> None:
        if self.dirty_tracking and self.unmap_dirty_sinks and self.dirty_pages_supported:
            self._unmap_with_dirty_bitmap(iova, length)
            return
        cmd = uapi.new(uapi.vfio_iommu_type1_dma_unmap, flags=0, iova=iova, size=length)
        self.fd.ioctl(uapi.VFIO_IOMMU_UNMAP_DMA, cmd)
        self._drop_leases(iova, length)

    def _drop_leases(self, iova: int, size: int) -> None:
        """After a successful unmap: the blocks wholly inside it may close again."""
        for gpa in [g for g, (n, _) in self._leases.items() if iova <= g and g + n <= iova + size]:
            del self._leases[gpa]

    def _unmap_with_dirty_bitmap(self, iova: int, length: int) -> None:
        """QEMU's vfio_dma_unmap_bitmap: UNMAP_DMA with GET_DIRTY_BITMAP returns the range's
        dirty bits in the same call (nothing can be written in between); they go to the
        unmap_dirty_sinks."""

        class _UnmapBitmap(ctypes.Structure):
            _fields_ = [("hdr", uapi.vfio_iommu_type1_dma_unmap), ("bitmap", uapi.vfio_bitmap)]

        bits = np.zeros(max(words_for_length(length, PAGE_SIZE), 1), np.uint64)
        cmd = _UnmapBitmap()
        cmd.hdr.argsz = ctypes.sizeof(cmd)
        cmd.hdr.flags = uapi.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
        cmd.hdr.iova = iova
        cmd.hdr.size = length
        cmd.bitmap.pgsize = PAGE_SIZE
        cmd.bitmap.size = bits.nbytes
        cmd.bitmap.data = bits.ctypes.data
        self.fd.ioctl(uapi.VFIO_IOMMU_UNMAP_DMA, cmd)
        self._drop_leases(iova, length)
        self._report_unmapped_dirty(iova, length, bits)

    # --- dirty pages: VFIO_IOMMU_DIRTY_PAGES ---------------------------------------------------
    @property
    def everything_dirty_reason(self) -> str:
        """Type1 knows nothing of DMA writes: unless every device limits dirtiness to the
        pages it pins (mediated devices, vfio_pin_pages), it reports every pinned page dirty
        on every VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP. A vfio-pci device never does."""
        if not self.dirty_pages_supported:
            return ""
        return (
            "the Type1 container reports every pinned page dirty on every sync "
            "(vfio_iommu_type1 tracks pins, not DMA writes, and no device scopes "
            "dirtiness): use IOMMUFD with a dirty-tracking IOMMU"
        )

    def set_dirty_page_tracking(self, start: bool) -> None:
        flag = (
            uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_START
            if start
            else uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP
        )
        cmd = uapi.new(uapi.vfio_iommu_type1_dirty_bitmap, flags=flag)
        self.fd.ioctl(uapi.VFIO_IOMMU_DIRTY_PAGES, cmd)
        self.dirty_tracking = start

    def _query_dirty_bitmap(
        self, iova: int, length: int, bitmap: npt.NDArray[np.uint64], page_size: int = PAGE_SIZE
    ) -> None:
        class _GetBitmap(ctypes.Structure):
            _fields_ = [
                ("hdr", uapi.vfio_iommu_type1_dirty_bitmap),
                ("range", uapi.vfio_iommu_type1_dirty_bitmap_get),
            ]

        out = np.zeros_like(bitmap)
        cmd = _GetBitmap()
        cmd.hdr.argsz = ctypes.sizeof(cmd)
        cmd.hdr.flags = uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP
        cmd.range.iova = iova
        cmd.range.size = length
        cmd.range.bitmap.pgsize = page_size
        cmd.range.bitmap.size = out.nbytes
        cmd.range.bitmap.data = out.ctypes.data
        self.fd.ioctl(uapi.VFIO_IOMMU_DIRTY_PAGES, cmd)
        np.bitwise_or(bitmap, out, out=bitmap)

    # --- lifetime ----------------------------------------------------------------------------
    def destroy(self) -> None:
        """Close the container once its last group has left (no-op before)."""
        if self.groups:
            return
        self.listener_unregister()
        if self in self.space.containers:
            self.space.containers.remove(self)
        self.fd.close()
        self._leases.clear()  # the kernel dropped every mapping with the container

    def __repr__(self) -> str:
        return (
            f"<LegacyContainer fd {self.fd.fd} type {self.iommu_type} groups "
            f"{[g.id for g in self.groups]} devices {[d.name for d in self.devices]}>"
        )


# --- VFIO_IOMMU_GET_INFO and its capability chain -------------------------------------------------
def _get_info(fd: Fd) -> bytes:
    """GET_INFO, growing the buffer to the argsz the kernel asks for (QEMU's loop)."""
    argsz = ctypes.sizeof(uapi.vfio_iommu_type1_info)
    while True:
        buf = (ctypes.c_uint8 * argsz)()
        hdr = uapi.vfio_iommu_type1_info.from_buffer(buf)
        hdr.argsz = argsz
        fd.ioctl(uapi.VFIO_IOMMU_GET_INFO, buf)
        if hdr.argsz <= argsz:
            return bytes(buf)
        argsz = int(hdr.argsz)


def _capabilities(buf: bytes, info: ctypes.Structure) -> dict[int, int]:
    """{capability id: offset} from the chain (offsets are from the start of the info)."""
    caps: dict[int, int] = {}
    if not info.flags & uapi.VFIO_IOMMU_INFO_CAPS:
        return caps
    off = int(info.cap_offset)
    hdr_size = ctypes.sizeof(uapi.vfio_info_cap_header)
    seen = set()
    while off and off not in seen and off + hdr_size <= len(buf):
        seen.add(off)
        hdr = uapi.vfio_info_cap_header.from_buffer_copy(buf, off)
        caps.setdefault(int(hdr.id), off)
        off = int(hdr.next)
    return caps


# --- groups ---------------------------------------------------------------------------------------
def _set_container(group: VfioGroup, container_fd: Fd) -> None:
    group.fd.ioctl(uapi.VFIO_GROUP_SET_CONTAINER, (ctypes.c_int * 1)(container_fd.number))


def _unset_container(group: VfioGroup) -> None:
    try:
        group.fd.ioctl(uapi.VFIO_GROUP_UNSET_CONTAINER)
    except KernelError as e:
        log.error("disconnecting group %d from its container failed: %s", group.id, e)


def _pick_iommu_type(fd: Fd) -> int:
    """TYPE1v2 over TYPE1 (the x86 choices of QEMU's vfio_get_iommu_type)."""
    for t in (uapi.VFIO_TYPE1v2_IOMMU, uapi.VFIO_TYPE1_IOMMU):
        if fd.ioctl(uapi.VFIO_CHECK_EXTENSION, t) > 0:
            return t
    raise ContainerSetupError(
        "the VFIO container supports neither TYPE1v2 nor TYPE1 (load vfio_iommu_type1)"
    )


def _connect_container(group: VfioGroup, space: AddressSpace, undo: Unwind) -> None:
    """QEMU's vfio_connect_container."""
    for c in space.containers:
        if not isinstance(c, LegacyContainer) or c.kernel.core is not group.kernel.core:
            continue
        try:
            _set_container(group, c.fd)
        except KernelError as e:
            log.debug("group %d cannot join %r: %s", group.id, c, e)
            continue
        group.container = c
        c.groups.insert(0, group)
        undo.push("leave the container", lambda: _disconnect_container(group))
        return

    fd = group.kernel.open_fd(CONTAINER_PATH, os.O_RDWR)
    undo.push("close the container", fd.close)
    version = fd.ioctl(uapi.VFIO_GET_API_VERSION)
    if version != uapi.VFIO_API_VERSION:
        raise ContainerSetupError(
            f"{CONTAINER_PATH} speaks VFIO API version {version}, fastmap {uapi.VFIO_API_VERSION}"
        )
    iommu_type = _pick_iommu_type(fd)
    _set_container(group, fd)
    undo.push("unset the group's container", lambda: _unset_container(group))
    fd.ioctl(uapi.VFIO_SET_IOMMU, iommu_type)

    container = LegacyContainer(space, fd, iommu_type)
    container.read_info()
    space.containers.insert(0, container)
    undo.push(
        "remove the container from the address space", lambda: space.containers.remove(container)
    )
    group.container = container
    container.groups.insert(0, group)
    undo.push("unlink the group", lambda: _unlink_group(group))
    container.listener_register()
    container.initialized = True


def _unlink_group(group: VfioGroup) -> None:
    c = group.container
    if c is not None:
        c.groups.remove(group)
    group.container = None


def _disconnect_container(group: VfioGroup) -> None:
    """QEMU's vfio_disconnect_container: the last group stops the listener first (unset
    may free the kernel's container), then UNSET_CONTAINER, then the container closes."""
    c = group.container
    assert c is not None
    c.groups.remove(group)
    group.container = None
    if not c.groups:
        c.listener_unregister()
    _unset_container(group)
    c.destroy()


def _get_group(kernel: Kernel, group_id: int, space: AddressSpace) -> VfioGroup:
    """QEMU's vfio_get_group: the open group, or open it, check it and connect it."""
    key = _group_key(kernel, group_id)
    group = _GROUPS.get(key)
    if group is not None:
        assert group.container is not None
        if group.container.space is not space:
            raise ValueError(f"IOMMU group {group_id} is already used by another address space")
        return group

    path = f"/dev/vfio/{group_id}"
    with Unwind(f"setting up IOMMU group {group_id}") as undo:
        fd = kernel.open_fd(path, os.O_RDWR)
        undo.push(f"close {path}", fd.close)
        status = uapi.new(uapi.vfio_group_status)
        fd.ioctl(uapi.VFIO_GROUP_GET_STATUS, status)
        if not status.flags & uapi.VFIO_GROUP_FLAGS_VIABLE:
            raise GroupNotViableError(
                f"IOMMU group {group_id} is not viable: bind every device of "
                f"/sys/kernel/iommu_groups/{group_id}/devices to vfio-pci (or unbind them)"
            )
        group = VfioGroup(kernel, group_id, fd)
        _connect_container(group, space, undo)
    _GROUPS[key] = group
    return group


def _put_group(group: VfioGroup) -> None:
    """QEMU's vfio_put_group: once no device of the group is attached, leave the container
    and close the group."""
    if group.devices:
        return
    if group.container is not None:
        _disconnect_container(group)
    _GROUPS.pop(_group_key(group.kernel, group.id), None)
    group.fd.close()


# --- the ops class ------------------------------------------------------------------------------
class LegacyOps:
    """QEMU's TYPE_VFIO_IOMMU_LEGACY: attach/detach through a group and a Type1 container."""

    name = "legacy"

    def attach_device(self, dev: VFIODevice, space: AddressSpace, sysfs: Sysfs) -> None:
        kernel = dev.kernel
        if dev.passed_fd is not None:
            raise ValueError(
                "a pre-opened device fd is a VFIO cdev: attach it with an IOMMUFDBackend"
            )
        missing = sysfs.missing_device(dev.sysfsdev)
        if missing is not None:
            raise DeviceNotFoundError(missing)
        try:
            group_id = sysfs.iommu_group(dev.sysfsdev)
        except FileNotFoundError as e:
            raise DeviceNotFoundError(
                f"{dev.sysfsdev} has no iommu_group: the device is not behind an IOMMU (or "
                "the IOMMU is off: intel_iommu=on / amd_iommu=on on the kernel command line)"
            ) from e
        dev.hiod = HostIOMMUDevice.legacy(dev.name, dev)
        try:
            with Unwind(f"attaching {dev.name} through IOMMU group {group_id} (Type1)") as undo:
                group = _get_group(kernel, group_id, space)
                undo.push(f"put group {group_id}", lambda: _put_group(group))
                if any(d.name == dev.name for d in group.devices):
                    raise ValueError(f"{dev.name} is already attached")
                name = ctypes.create_string_buffer(dev.name.encode())
                dev_fd = group.fd.ioctl(uapi.VFIO_GROUP_GET_DEVICE_FD, name)
                dev.fd = Fd(kernel, dev_fd)
                undo.push("close the device fd", lambda: _close_device_fd(dev))
                dev.read_device_info()
        except BaseException:
            dev.hiod = None
            raise
        container = group.container
        assert container is not None
        dev.group = group
        group.devices.insert(0, dev)
        container.devices.insert(0, dev)
        dev.container = container

    def detach_device(self, dev: VFIODevice) -> None:
        group = dev.group
        container = dev.container
        assert group is not None and container is not None
        container.devices.remove(dev)
        dev.container = None
        group.devices.remove(dev)
        dev.group = None
        _close_device_fd(dev)
        dev.hiod = None
        _put_group(group)


def _close_device_fd(dev: VFIODevice) -> None:
    fd, dev.fd = dev.fd, None
    if fd is not None:
        fd.close()
