"""What the host IOMMU behind a VFIO device can do (QEMU's HostIOMMUDevice).

A vIOMMU (or a user deciding how to set up DMA) asks it for the IOMMU type, its
capabilities (dirty tracking), its address width and the usable IOVA ranges.

* IOMMUFD devices are realized from IOMMU_GET_HW_INFO once the device is bound: the type
  (Intel VT-d, ARM SMMUv3, the selftest mock, or NONE when the driver reports nothing, as
  virtio-iommu does), the IOMMU_HW_CAP_* bits and the driver's raw record.
* Legacy (Type1) devices learn nothing from the kernel: only what their container's IOVA
  ranges imply.

Address width: VT-d's capability register says it directly (MGAW, bits 21:16, is the width
minus one). Otherwise it is what QEMU uses: the top bit of the container's last IOVA range
plus one, or 64 before the device is attached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from fastmap import uapi
from fastmap.allocator import IovaRange

if TYPE_CHECKING:
    from fastmap.lifecycle.backend import DeviceHwInfo
    from fastmap.lifecycle.device import VFIODevice

_TYPE_NAMES = {
    "IOMMU_HW_INFO_TYPE_NONE": "none",
    "IOMMU_HW_INFO_TYPE_INTEL_VTD": "intel-vtd",
    "IOMMU_HW_INFO_TYPE_ARM_SMMUV3": "arm-smmuv3",
    "IOMMU_HW_INFO_TYPE_SELFTEST": "selftest",
}
_MGAW_SHIFT, _MGAW_MASK = 16, 0x3F


def hw_info_type_name(hw_type: int) -> str:
    """'intel-vtd', 'arm-smmuv3', 'selftest', 'none' or 'type N' for IOMMU_HW_INFO_TYPE_*."""
    for const, label in _TYPE_NAMES.items():
        if uapi.CONSTANTS.get(const) == hw_type:
            return label
    return f"type {hw_type:#x}"


def capability_names(capabilities: int) -> str:
    """The IOMMU_HW_CAP_* bits by name, e.g. 'DIRTY_TRACKING' ('-' for none)."""
    names = [
        name.removeprefix("IOMMU_HW_CAP_")
        for name, value in uapi.CONSTANTS.items()
        if name.startswith("IOMMU_HW_CAP_") and capabilities & value
    ]
    return " ".join(names) or "-"


@dataclass
class HostIOMMUDevice:
    """The host IOMMU as one VFIO device sees it."""

    name: str
    #: "iommufd" (realized from GET_HW_INFO) or "legacy" (Type1: nothing to ask).
    backend: Literal["iommufd", "legacy"]
    #: IOMMU_HW_INFO_TYPE_*.
    type: int = 0
    #: IOMMU_HW_CAP_* bits.
    capabilities: int = 0
    #: The driver's GET_HW_INFO record (struct iommu_hw_info_vtd for VT-d).
    data: bytes = b""
    _agent: VFIODevice | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_hw_info(
        cls, name: str, info: DeviceHwInfo, agent: VFIODevice | None = None
    ) -> HostIOMMUDevice:
        """An IOMMUFD device's HIOD from its GET_HW_INFO answer."""
        return cls(name, "iommufd", info.type, info.capabilities, info.data, agent)

    @classmethod
    def legacy(cls, name: str, agent: VFIODevice | None = None) -> HostIOMMUDevice:
        """A Type1 device's HIOD: no hardware information."""
        return cls(name, "legacy", uapi.IOMMU_HW_INFO_TYPE_NONE, 0, b"", agent)

    @property
    def type_name(self) -> str:
        """'intel-vtd', 'arm-smmuv3', 'selftest', 'none' or 'type N'."""
        return hw_info_type_name(self.type)

    def __repr__(self) -> str:
        return (
            f"HostIOMMUDevice({self.name}, {self.backend}, {self.type_name}, "
            f"capabilities={self.capabilities:#x} [{capability_names(self.capabilities)}], "
            f"data={len(self.data)} bytes)"
        )

    @property
    def dirty_tracking(self) -> bool:
        """The IOMMU can track DMA writes (IOMMU_HW_CAP_DIRTY_TRACKING)."""
        return bool(self.capabilities & uapi.IOMMU_HW_CAP_DIRTY_TRACKING)

    def _vtd(self) -> tuple[int, int] | None:
        size = uapi.offsetofend(uapi.iommu_hw_info_vtd, "ecap_reg")
        if self.type != uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD or len(self.data) < size:
            return None
        rec = uapi.iommu_hw_info_vtd.from_buffer_copy(self.data[:size])
        return int(rec.cap_reg), int(rec.ecap_reg)

    @property
    def vtd_cap_reg(self) -> int | None:
        """VT-d's capability register, or None for other IOMMUs."""
        regs = self._vtd()
        return None if regs is None else regs[0]

    @property
    def vtd_ecap_reg(self) -> int | None:
        """VT-d's extended capability register, or None for other IOMMUs."""
        regs = self._vtd()
        return None if regs is None else regs[1]

    @property
    def aw_bits(self) -> int:
        """Address width in bits: VT-d MGAW + 1, else from the IOVA ranges, else 64."""
        cap = self.vtd_cap_reg
        if cap is not None:
            return ((cap >> _MGAW_SHIFT) & _MGAW_MASK) + 1
        container = self._agent.container if self._agent is not None else None
        return container.aw_bits if container is not None else 64

    @property
    def iova_ranges(self) -> list[IovaRange]:
        """The usable IOVA ranges of the device's container (empty before attach)."""
        container = self._agent.container if self._agent is not None else None
        return list(container.iova_ranges) if container is not None else []

    @property
    def page_size_mask(self) -> int:
        """The container's supported page sizes (0 before attach)."""
        container = self._agent.container if self._agent is not None else None
        return container.pgsizes if container is not None else 0
