"""IOMMU_GET_HW_INFO for a device bound to vfio-pci: what its IOMMU driver reports.

The probe binds the device's VFIO cdev to a fresh iommufd (VFIO_DEVICE_BIND_IOMMUFD), asks,
and closes both: nothing stays attached. A device another process holds answers EBUSY; the
probe reports that instead of the record.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastmap import uapi
from fastmap.errors import FastmapError
from fastmap.kernel import Kernel
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.host_iommu_device import HostIOMMUDevice
from fastmap.lifecycle.sysfs import PCI_DEVICES, sysfs_for
from fastmap.lifecycle.vfio_iommufd import bind, open_cdev

_VTD_NEST, _VTD_PASID, _VTD_SMTS = 26, 40, 43


@dataclass(frozen=True)
class HwInfo:
    """The GET_HW_INFO answer, decoded."""

    bdf: str
    type_name: str
    dirty_tracking: bool
    #: VT-d only (from the ecap register the record carries); None elsewhere.
    nesting: bool | None
    pasid: bool | None
    aw_bits: int | None

    def describe(self) -> str:
        parts = [
            f"type {self.type_name}",
            f"dirty tracking {'yes' if self.dirty_tracking else 'no'}",
        ]
        if self.nesting is not None:
            parts.append(f"nesting {'yes' if self.nesting else 'no'}")
        if self.pasid is not None:
            parts.append(f"PASID {'yes' if self.pasid else 'no'}")
        if self.aw_bits is not None:
            parts.append(f"{self.aw_bits}-bit IOVA")
        return ", ".join(parts)


def probe(kernel: Kernel, bdf: str) -> HwInfo:
    """Bind `bdf`'s cdev to a new iommufd and ask IOMMU_GET_HW_INFO. Raises the
    KernelError/FastmapError of the step that failed."""
    sysfs = sysfs_for(kernel)
    with IOMMUFDBackend(kernel=kernel) as backend:
        dev_fd = open_cdev(kernel, sysfs, f"{PCI_DEVICES}/{bdf}")
        try:
            info = backend.get_device_info(bind(dev_fd, backend))
        finally:
            dev_fd.close()
    hiod = HostIOMMUDevice.from_hw_info(bdf, info)
    ecap = hiod.vtd_ecap_reg
    vtd = info.type == uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD and ecap is not None
    sm = vtd and bool((ecap or 0) >> _VTD_SMTS & 1)
    return HwInfo(
        bdf,
        hiod.type_name,
        info.dirty_tracking,
        nesting=(sm and bool((ecap or 0) >> _VTD_NEST & 1)) if vtd else None,
        pasid=(sm and bool((ecap or 0) >> _VTD_PASID & 1)) if vtd else None,
        aw_bits=hiod.aw_bits if vtd else None,
    )


def probe_or_reason(kernel: Kernel, bdf: str) -> HwInfo | str:
    """`probe`, or the one-line reason it failed."""
    try:
        return probe(kernel, bdf)
    except (FastmapError, OSError) as e:
        return str(e).split("; hint:")[0]
