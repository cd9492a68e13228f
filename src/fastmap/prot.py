"""Access rights of a mapping: the one spelling every map-like call takes (``prot=``).

    ioas.map(buf, prot=Prot.READ)          # the device may read, not write
    space.add_ram(length, gpa, prot=Prot.READ)

The values are IOMMU_IOAS_MAP_READABLE and IOMMU_IOAS_MAP_WRITEABLE, so a `Prot` is also the
access part of an IOMMU_IOAS_MAP/COPY/MAP_FILE ``flags`` field; the legacy Type1 path
translates it to VFIO_DMA_MAP_FLAG_READ/WRITE.
"""

from __future__ import annotations

import enum

from fastmap import uapi

__all__ = ["Prot"]


class Prot(enum.IntFlag):
    """READ: the device may read the memory; WRITE: it may write it; RW: both."""

    READ = uapi.IOMMU_IOAS_MAP_READABLE
    WRITE = uapi.IOMMU_IOAS_MAP_WRITEABLE
    RW = READ | WRITE


def check(prot: Prot | int) -> Prot:
    """`prot` as a Prot; a mapping needs READ, WRITE or both, and nothing else."""
    p = Prot(int(prot) & int(Prot.RW))
    if p != prot or not p:
        raise ValueError(f"prot={prot!r}: expected Prot.READ, Prot.WRITE or Prot.RW")
    return p
