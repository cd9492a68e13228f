"""Errors and warnings of the VFIO device lifecycle (attach/detach), beyond KernelError.

A failing kernel call during attach raises its own `KernelError` (errno, call, hint), with
notes saying which device and step it was and what was undone. The classes here are for
failures that are not one kernel call's errno, and for the conditions QEMU only warns about.
"""

from __future__ import annotations

from fastmap.errors import FastmapError


class VFIOError(FastmapError):
    """A VFIO device could not be found, opened or attached (not a single call's errno)."""


class DeviceNotFoundError(VFIOError, LookupError):
    """No such device, or it is not bound to vfio-pci (no vfio-dev/ or iommu_group)."""


class DeviceMismatchError(VFIOError):
    """The opened VFIO cdev is not the char device sysfs names (stale or raced node)."""


class GroupNotViableError(VFIOError):
    """VFIO_GROUP_GET_STATUS says the IOMMU group is not viable: a device in it is bound to
    a host driver. Bind every device of the group to vfio-pci (or unbind it)."""


class ContainerSetupError(VFIOError):
    """The legacy container cannot be set up (VFIO API version, no Type1 IOMMU model)."""


class LifecycleWarning(UserWarning):
    """Base of the warnings the lifecycle emits where QEMU warns and carries on."""


class IovaRangesFallbackWarning(LifecycleWarning):
    """IOMMU_IOAS_IOVA_RANGES failed: the container assumes the whole 64-bit IOVA space
    and the host page size, which may let maps fail later (QEMU does the same)."""


class DirtyTrackingWarning(LifecycleWarning):
    """A device joined a dirty-tracking container through an IOMMU without dirty tracking:
    its DMA writes will not show in the container's dirty bitmaps."""
