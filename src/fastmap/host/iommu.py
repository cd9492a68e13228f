"""The host's IOMMUs as sysfs shows them (/sys/class/iommu/NAME), and what each can do.

Each driver registers its units there under its own naming: VT-d `dmarN` with an
`intel-iommu/` group (cap and ecap registers in hex), AMD `ivhdN` with `amd-iommu/`
(cap, and features as "EFR:EFR2"), ARM `smmu3.0xADDR`, virtio-iommu the virtio bus name
(`virtioN`). Capabilities are decoded the way the 6.12 drivers decide them:

* VT-d (drivers/iommu/intel/iommu.h): scalable mode is ecap SMTS (bit 43) with intel_iommu_sm
  on; dirty tracking needs SMTS, SLADS (45) and SMPWC (48); nesting SMTS and NEST (26);
  PASID SMTS and PASID (40).
* AMD (amd_iommu_types.h): dirty tracking is EFR HDSUP (bit 52); nesting (v2 page tables,
  guest translation) GT (bit 4); PASID a non-zero PASMAX (bits 36:32) with GT.
* SMMUv3 and virtio-iommu (named after its PCI address; its driver is virtio_iommu)
  publish no registers in sysfs: IOMMU_GET_HW_INFO on a bound device says the rest
  (`fastmap.host.hwinfo`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastmap.host.files import HostFiles

CLASS_IOMMU = "/sys/class/iommu"

_VTD_SMTS, _VTD_SLADS, _VTD_SMPWC, _VTD_NEST, _VTD_PASID = 43, 45, 48, 26, 40
_AMD_GT, _AMD_HDSUP, _AMD_PASMAX_SHIFT, _AMD_PASMAX_MASK = 4, 52, 32, 0x1F


def _bit(value: int, n: int) -> bool:
    return bool((value >> n) & 1)


@dataclass(frozen=True)
class IommuUnit:
    """One IOMMU unit. Capabilities are None where sysfs does not say."""

    name: str
    #: "intel-vtd", "amd-vi", "arm-smmuv3", "virtio-iommu" or "unknown".
    type: str
    devices: int
    dirty_tracking: bool | None = None
    nesting: bool | None = None
    pasid: bool | None = None
    registers: str = ""

    def describe(self) -> str:
        def flag(name: str, value: bool | None) -> str:
            return f"{name} {'?' if value is None else ('yes' if value else 'no')}"

        caps = ", ".join(
            flag(n, v)
            for n, v in (
                ("dirty tracking", self.dirty_tracking),
                ("nesting", self.nesting),
                ("PASID", self.pasid),
            )
        )
        regs = f" [{self.registers}]" if self.registers else ""
        return f"{self.name}: {self.type}, {self.devices} device(s); {caps}{regs}"


def _hex(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


def read_unit(files: HostFiles, name: str) -> IommuUnit:
    """What sysfs says about /sys/class/iommu/`name`."""
    base = f"{CLASS_IOMMU}/{name}"
    devices = len(files.listdir(f"{base}/devices"))
    cap = _hex(files.read(f"{base}/intel-iommu/cap"))
    ecap = _hex(files.read(f"{base}/intel-iommu/ecap"))
    if cap is not None and ecap is not None:
        sm = _bit(ecap, _VTD_SMTS)
        return IommuUnit(
            name,
            "intel-vtd",
            devices,
            dirty_tracking=sm and _bit(ecap, _VTD_SLADS) and _bit(ecap, _VTD_SMPWC),
            nesting=sm and _bit(ecap, _VTD_NEST),
            pasid=sm and _bit(ecap, _VTD_PASID),
            registers=f"cap={cap:#x} ecap={ecap:#x}",
        )
    features = files.read(f"{base}/amd-iommu/features")
    if features is not None:
        efr = _hex(features.split(":")[0]) or 0
        gt = _bit(efr, _AMD_GT)
        pasmax = (efr >> _AMD_PASMAX_SHIFT) & _AMD_PASMAX_MASK
        return IommuUnit(
            name,
            "amd-vi",
            devices,
            dirty_tracking=_bit(efr, _AMD_HDSUP),
            nesting=gt,
            pasid=gt and pasmax > 0,
            registers=f"features={features}",
        )
    if name.startswith("smmu3."):
        return IommuUnit(name, "arm-smmuv3", devices)
    # virtio-iommu names its unit after the virtio transport's parent (the PCI address of
    # virtio-iommu-pci); its driver says what it is.
    if name.startswith("virtio") or files.readlink_name(f"{base}/device/driver") == "virtio_iommu":
        # virtio-iommu (6.12) has no dirty tracking, nesting or PASID.
        return IommuUnit(name, "virtio-iommu", devices, False, False, False)
    if name.startswith("iommufd_selftest"):
        # CONFIG_IOMMUFD_TEST's mock IOMMU: dirty tracking yes, as its mock domains have it.
        return IommuUnit(name, "iommufd-selftest (mock)", devices, True, None, None)
    return IommuUnit(name, "unknown", devices)


def read_units(files: HostFiles) -> list[IommuUnit]:
    """Every IOMMU unit sysfs lists."""
    return [read_unit(files, name) for name in files.listdir(CLASS_IOMMU)]
