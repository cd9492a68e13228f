"""What every VFIO container has in common (QEMU's VFIOContainerBase).

A container is one I/O address space shared by the devices attached to it: an iommufd IOAS
(`fastmap.lifecycle.vfio_iommufd.IommufdContainer`) or a legacy Type1 container
(`fastmap.lifecycle.vfio_legacy.LegacyContainer`). It listens to an `AddressSpace` and keeps every
RAM block mapped at IOVA = GPA for as long as it has devices.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fastmap.allocator import IovaRange
from fastmap.bitmap import words_for_length
from fastmap.errors import KernelError
from fastmap.prot import Prot
from fastmap.ram import PAGE_SIZE, RamBlock

if TYPE_CHECKING:
    from fastmap.lifecycle.address_space import AddressSpace
    from fastmap.lifecycle.device import VFIODevice

log = logging.getLogger("fastmap.vfio")

U64_MAX = (1 << 64) - 1
#: What a container assumes when it cannot learn its IOVA ranges.
FULL_IOVA_RANGE = (IovaRange(0, U64_MAX),)


#: Told the dirty bits of a range just before it is unmapped while tracking is on:
#: fn(iova, size, bitmap), one bit per host page (see `Container.unmap_dirty_sinks`).
UnmapDirtySink = Callable[[int, int, "npt.NDArray[np.uint64]"], None]


class Container(ABC):
    """An I/O address space serving devices of one AddressSpace."""

    def __init__(self, space: AddressSpace) -> None:
        self.space = space
        #: Attached devices, newest first.
        self.devices: list[VFIODevice] = []
        self.iova_ranges: list[IovaRange] = list(FULL_IOVA_RANGE)
        #: Supported IOMMU page sizes as a bitmap (the smallest is the mapping granule).
        self.pgsizes = PAGE_SIZE
        self.dirty_pages_supported = False
        self.dirty_tracking = False
        self.initialized = False
        #: Called with the dirty bits of every range unmapped while dirty tracking is on, so
        #: writes to it since the last query are not lost (fastmap.migration.DirtyTracker).
        self.unmap_dirty_sinks: list[UnmapDirtySink] = []

    # --- the memory listener -----------------------------------------------------------
    def region_add(self, sections: Sequence[RamBlock]) -> None:
        """Map RAM sections at IOVA = GPA, all or nothing."""
        self._map_sections(sections)

    def region_del(self, sections: Sequence[RamBlock]) -> None:
        """Unmap RAM sections. Each failure is logged (as QEMU reports them) and the others
        are still unmapped; then the first failure is raised, so that the address space
        does not free memory the IOMMU still maps."""
        first: Exception | None = None
        for s in sections:
            try:
                self.dma_unmap(s.gpa, s.length)
            except Exception as e:
                log.error("%r: unmapping %r failed: %s", self, s, e)
                first = first or e
        if first is not None:
            raise first

    def listener_unregister(self) -> None:
        """Stop following the address space, unmapping all its RAM. A failed unmap is only
        logged here: the container is being torn down, and its IOAS's close unmaps all."""
        try:
            self.space.unregister_listener(self)
        except Exception as e:
            log.error("%r: unmapping the address space's RAM failed: %s", self, e)

    def listener_register(self) -> None:
        """Follow the address space: map all its RAM now, and later blocks as they come."""
        self.space.register_listener(self)

    @property
    def listening(self) -> bool:
        return self.space.listening(self)

    # --- per-kind operations -------------------------------------------------------------
    @abstractmethod
    def _map_sections(self, sections: Sequence[RamBlock]) -> None:
        """Map every section with its `prot`; on failure unmap what was mapped and raise."""

    @abstractmethod
    def dma_map(self, va: int, length: int, iova: int, prot: Prot = Prot.RW) -> None:
        """Map `length` bytes at `va` to `iova`."""

    @abstractmethod
    def dma_unmap(self, iova: int, length: int) -> None:
        """Unmap one range; unmapping nothing is not an error."""

    @abstractmethod
    def set_dirty_page_tracking(self, start: bool) -> None:
        """Start (clearing) or stop dirty tracking in the IOMMU."""

    @abstractmethod
    def _query_dirty_bitmap(
        self, iova: int, length: int, bitmap: npt.NDArray[np.uint64], page_size: int = PAGE_SIZE
    ) -> None:
        """OR the dirty bits of [iova, iova+size) at `page_size` into `bitmap`."""

    # --- dirty pages -----------------------------------------------------------------------
    @property
    def tracks_all_devices(self) -> bool:
        """Whether the dirty bitmaps see the DMA writes of every device of the container."""
        return self.dirty_pages_supported

    @property
    def everything_dirty_reason(self) -> str:
        """Why this container's bitmaps report every mapped page dirty on every sync even
        though it tracks ('' when they report only what was written)."""
        return ""

    def get_dirty_bitmap(
        self, iova: int, length: int, page_size: int = PAGE_SIZE
    ) -> npt.NDArray[np.uint64]:
        """Dirty bits of [iova, iova+size), one per page (bit i = iova + i*page_size).

        As QEMU's vfio_get_dirty_bitmap: a container whose IOMMU cannot track dirty pages
        reports every page dirty (the caller must assume the device wrote anywhere); so does
        one with a device whose writes its bitmaps do not see (`tracks_all_devices`).
        """
        words = words_for_length(length, page_size)
        bitmap = np.zeros(max(words, 1), np.uint64)
        if not self.tracks_all_devices:
            pages = -(-length // page_size)
            _set_bits(bitmap, pages)
            return bitmap
        self._query_dirty_bitmap(iova, length, bitmap, page_size)
        return bitmap

    def _unmapping(self, iova: int, length: int) -> None:
        """Before unmapping [iova, iova+size) while tracking is on: hand its dirty bits to
        the unmap_dirty_sinks (all pages dirty if they cannot be read: never under-report)."""
        if not (self.dirty_tracking and self.unmap_dirty_sinks):
            return
        try:
            bitmap = self.get_dirty_bitmap(iova, length)
        except KernelError as e:
            log.warning(
                "%r: dirty bits of [%#x, +%#x) unreadable before unmap (%s): "
                "reporting every page dirty",
                self,
                iova,
                length,
                e,
            )
            bitmap = np.zeros(max(words_for_length(length, PAGE_SIZE), 1), np.uint64)
            _set_bits(bitmap, -(-length // PAGE_SIZE))
        self._report_unmapped_dirty(iova, length, bitmap)

    def _report_unmapped_dirty(
        self, iova: int, length: int, bitmap: npt.NDArray[np.uint64]
    ) -> None:
        for sink in list(self.unmap_dirty_sinks):
            sink(iova, length, bitmap)

    # --- geometry --------------------------------------------------------------------------
    @property
    def min_page_size(self) -> int:
        """The mapping granule: the smallest page size in `pgsizes`."""
        return self.pgsizes & -self.pgsizes if self.pgsizes else PAGE_SIZE

    @property
    def aw_bits(self) -> int:
        """Address width implied by the IOVA ranges (last range's top bit + 1)."""
        if not self.iova_ranges:
            return 64
        return max(r.last for r in self.iova_ranges).bit_length()

    @abstractmethod
    def destroy(self) -> None:
        """Release the container when it has no devices left (no-op otherwise)."""


def _set_bits(bitmap: npt.NDArray[np.uint64], count: int) -> None:
    full, rest = divmod(count, 64)
    bitmap[:full] = np.uint64(U64_MAX)
    if rest:
        bitmap[full] = np.uint64((1 << rest) - 1)
