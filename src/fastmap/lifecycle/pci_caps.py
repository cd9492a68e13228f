"""PCI capabilities in a function's config space: the standard list (from the capabilities
pointer at 0x34) and the PCI Express extended list (from 0x100, in 4 KiB config spaces).

    caps = parse_capabilities(dev.read(uapi.VFIO_PCI_CONFIG_REGION_INDEX, 0, size))
    msi = find_capability(caps, CAP_ID_MSI)

Walks stop at the end of the space, at a pointer into the header, and after as many
entries as the space can hold, so a corrupt or looping list cannot hang the caller (the
kernel's pci_find_capability stops the same way, after 48 standard entries).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10
PCI_CAPABILITY_LIST = 0x34
PCI_CFG_SPACE_SIZE = 256
PCI_CFG_SPACE_EXP_SIZE = 4096
_STD_TTL = 48  # the kernel's PCI_FIND_CAP_TTL
_EXT_TTL = (PCI_CFG_SPACE_EXP_SIZE - PCI_CFG_SPACE_SIZE) // 8

CAP_ID_PM = 0x01
CAP_ID_MSI = 0x05
CAP_ID_VNDR = 0x09
CAP_ID_EXP = 0x10
CAP_ID_MSIX = 0x11
#: Standard capability names by id (PCI Code and ID Assignment spec).
CAP_NAMES = {
    0x01: "Power Management",
    0x02: "AGP",
    0x03: "VPD",
    0x04: "Slot ID",
    0x05: "MSI",
    0x06: "CompactPCI Hot Swap",
    0x07: "PCI-X",
    0x08: "HyperTransport",
    0x09: "Vendor Specific",
    0x0A: "Debug port",
    0x0B: "CompactPCI CRC",
    0x0C: "PCI Hot-Plug",
    0x0D: "Bridge subsystem vendor ID",
    0x0E: "AGP 8x",
    0x0F: "Secure Device",
    0x10: "PCI Express",
    0x11: "MSI-X",
    0x12: "SATA",
    0x13: "Advanced Features",
    0x14: "Enhanced Allocation",
    0x15: "Flattening Portal Bridge",
}
EXT_CAP_ID_ERR = 0x0001
EXT_CAP_ID_DSN = 0x0003
EXT_CAP_ID_SRIOV = 0x0010
EXT_CAP_ID_ATS = 0x000F
EXT_CAP_ID_PASID = 0x001B
EXT_CAP_NAMES = {
    0x0001: "Advanced Error Reporting",
    0x0002: "Virtual Channel",
    0x0003: "Device Serial Number",
    0x0004: "Power Budgeting",
    0x000B: "Vendor Specific",
    0x000D: "Access Control Services",
    0x000E: "Alternative Routing-ID",
    0x000F: "Address Translation Services",
    0x0010: "SR-IOV",
    0x0013: "Page Request",
    0x0015: "Resizable BAR",
    0x0018: "Latency Tolerance Reporting",
    0x001B: "PASID",
    0x001E: "L1 PM Substates",
    0x0023: "Designated Vendor-Specific",
    0x0025: "Data Link Feature",
    0x0026: "Physical Layer 16.0 GT/s",
}


@dataclass(frozen=True)
class PciCapability:
    """One capability: its id, where its header is, and whether it is an extended one."""

    id: int
    offset: int
    extended: bool = False
    version: int = 0  # extended capabilities only

    @property
    def name(self) -> str:
        names = EXT_CAP_NAMES if self.extended else CAP_NAMES
        return names.get(self.id, f"unknown {self.id:#x}")

    def __str__(self) -> str:
        kind = "ext " if self.extended else ""
        return f"{kind}cap {self.id:#04x} {self.name} @ {self.offset:#x}"


@dataclass(frozen=True)
class MsiInfo:
    """An MSI capability's control word, decoded."""

    enabled: bool
    vectors: int  # Multiple Message Capable: how many the function can request
    addr64: bool
    per_vector_masking: bool


def parse_capabilities(config: bytes) -> list[PciCapability]:
    """Every capability of `config` (a function's config space, 256 or 4096 bytes): the
    standard list, then the extended list when the space is 4 KiB."""
    return _standard(config) + _extended(config)


def find_capability(
    caps: list[PciCapability], cap_id: int, *, extended: bool = False
) -> PciCapability | None:
    """The first capability with this id (and kind), or None."""
    for cap in caps:
        if cap.id == cap_id and cap.extended == extended:
            return cap
    return None


def msi_info(config: bytes, cap: PciCapability) -> MsiInfo:
    """Decode the MSI capability at `cap`."""
    if cap.id != CAP_ID_MSI or cap.extended:
        raise ValueError(f"{cap} is not an MSI capability")
    (flags,) = struct.unpack_from("<H", config, cap.offset + 2)
    return MsiInfo(
        enabled=bool(flags & 0x1),
        vectors=1 << ((flags >> 1) & 0x7),
        addr64=bool(flags & 0x80),
        per_vector_masking=bool(flags & 0x100),
    )


def _standard(config: bytes) -> list[PciCapability]:
    if len(config) < 0x40:
        raise ValueError(f"config space of {len(config)} bytes has no full header")
    (status,) = struct.unpack_from("<H", config, PCI_STATUS)
    if not status & PCI_STATUS_CAP_LIST:
        return []
    caps: list[PciCapability] = []
    pos = config[PCI_CAPABILITY_LIST]
    limit = min(len(config), PCI_CFG_SPACE_SIZE)
    for _ in range(_STD_TTL):
        pos &= ~3  # the low two bits are reserved
        if pos < 0x40 or pos + 2 > limit:
            break
        cap_id = config[pos]
        if cap_id == 0xFF:  # a function that is not there reads all-ones
            break
        caps.append(PciCapability(cap_id, pos))
        pos = config[pos + 1]
    return caps


def _extended(config: bytes) -> list[PciCapability]:
    if len(config) < PCI_CFG_SPACE_EXP_SIZE:
        return []
    caps: list[PciCapability] = []
    pos = PCI_CFG_SPACE_SIZE
    for _ in range(_EXT_TTL):
        (header,) = struct.unpack_from("<I", config, pos)
        if header in (0, 0xFFFFFFFF):  # no extended capabilities
            break
        caps.append(PciCapability(header & 0xFFFF, pos, True, (header >> 16) & 0xF))
        pos = (header >> 20) & 0xFFC
        if pos < PCI_CFG_SPACE_SIZE:
            break
    return caps
