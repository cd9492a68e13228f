"""Dirty-page tracking for live migration.

The harvester (`DirtyHarvester`) performs one pre-copy sync: for every tracked IOVA range it
asks every dirty-tracking HWPT for the range's dirty bitmap (IOMMU_HWPT_GET_DIRTY_BITMAP)
and ORs the answers into one bitmap per range, as QEMU does for a container with several
HWPTs. The calls run in C++ with the GIL released; bitmaps come back as numpy arrays in the
kernel's layout (see fastmap.bitmap), ready for `fastmap.bitmap.to_ranges`.

    harvester = DirtyHarvester(kernel, iommufd)
    result = harvester.harvest([hwpt], [(iova, length)], page_size=4096)
    result.dirty_pages()          # how many pages were written since the last sync
    result.dirty_iova_ranges()    # (N, 2) [iova, length] in bytes, to copy again

Reading clears the IOPTE dirty bits (so the next sync reports only new writes) unless
`no_clear=True`. The memory the bitmaps live in is owned by the returned arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fastmap import _core, bitmap, uapi
from fastmap._checks import u64_pairs
from fastmap.errors import KernelError
from fastmap.kernel import Fd, Kernel
from fastmap.object_id import ObjectId

__all__ = ["DirtyHarvester", "Harvest"]

U64 = NDArray[np.uint64]


@dataclasses.dataclass(frozen=True, eq=False)
class Harvest:
    """The dirty bitmaps of one sync: ``bitmaps[i]`` covers ``[iovas[i], iovas[i]+lengths[i])``.

    Bit ``j`` of ``bitmaps[i]`` is the page at ``iovas[i] + j * page_size``. The bitmaps are
    consecutive views into ``buffer``, which can be passed back to `DirtyHarvester.harvest`
    as ``out`` to reuse the memory on the next sync.
    """

    page_size: int
    iovas: U64
    lengths: U64
    bitmaps: list[U64]
    buffer: U64

    def nbits(self, i: int) -> int:
        """Pages in range ``i`` (bits of ``bitmaps[i]`` that count)."""
        return -(-int(self.lengths[i]) // self.page_size)

    def dirty_pages(self) -> int:
        """Dirty pages over all ranges."""
        return sum(bitmap.popcount(bm, self.nbits(i)) for i, bm in enumerate(self.bitmaps))

    def dirty_iova_ranges(self) -> U64:
        """The dirty runs of every range as an ``(N, 2)`` array of ``[iova, length]`` bytes."""
        parts = []
        for i, bm in enumerate(self.bitmaps):
            runs = bitmap.to_ranges(bm, self.nbits(i))
            if len(runs):
                runs *= np.uint64(self.page_size)
                runs[:, 0] += self.iovas[i]
                parts.append(runs)
        if not parts:
            return np.zeros((0, 2), dtype=np.uint64)
        return np.concatenate(parts)


class DirtyHarvester:
    """Issues IOMMU_HWPT_GET_DIRTY_BITMAP for every (HWPT, range) of a sync.

    ``kernel`` is the kernel the iommufd belongs to (a `fastmap.kernel.Kernel`, e.g. a
    `fastmap.sim.SimKernel`); the harvester keeps it alive. ``iommufd`` is an open
    /dev/iommu (an `Fd` or its number), which the caller keeps open while harvesting.
    """

    def __init__(self, kernel: Kernel, iommufd: Fd | int) -> None:
        if not isinstance(kernel, Kernel):
            raise ValueError(f"kernel: expected a fastmap.kernel.Kernel, got {kernel!r}")
        fd = iommufd.number if isinstance(iommufd, Fd) else iommufd
        if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
            raise ValueError(f"iommufd: expected an open fd, got {iommufd!r}")
        self._kernel = kernel
        self._iommufd = iommufd
        self._core = _core.DirtyHarvester(kernel.core, fd)

    @property
    def iommufd(self) -> int:
        return self._core.iommufd

    @staticmethod
    def bitmap_words(length: int, page_size: int) -> int:
        """u64 words of bitmap a range of ``length`` bytes needs at ``page_size``."""
        return bitmap.words_for_length(length, page_size)

    def buffer(self, ranges: Any, page_size: int = 4096) -> U64:
        """A zeroed buffer that holds the bitmaps of ``ranges`` (for ``harvest(out=...)``)."""
        _, lengths = _ranges(ranges, page_size)
        return np.zeros(_total_words(lengths, page_size), dtype=np.uint64)

    def harvest(
        self,
        hwpt_ids: Sequence[int],
        ranges: Any,
        page_size: int = 4096,
        out: U64 | None = None,
        no_clear: bool = False,
    ) -> Harvest:
        """One sync: the OR over ``hwpt_ids`` of each range's dirty bitmap.

        ``ranges`` is a sequence of ``(iova, length)`` pairs (or an ``(N, 2)`` array), each
        a non-empty multiple of ``page_size`` (a power of two) starting at a multiple of it.
        ``out``, if given, is a contiguous uint64 buffer of exactly the words the bitmaps
        need (`buffer`); it is zeroed and reused. Raises ValueError for bad arguments and
        the errno's `fastmap.errors.KernelError` for the first call that fails, naming
        the HWPT and the range (``arguments["range_index"]``).
        """
        hwpts = _hwpt_ids(hwpt_ids, self._iommufd)
        iovas, lengths = _ranges(ranges, page_size)
        words = _total_words(lengths, page_size)
        if out is None:
            out = np.zeros(words, dtype=np.uint64)
        elif not (
            isinstance(out, np.ndarray)
            and out.dtype == np.uint64
            and out.ndim == 1
            and out.flags.c_contiguous
            and out.flags.writeable
        ):
            raise ValueError("out: expected a writable contiguous 1-D numpy.uint64 array")
        elif out.shape[0] != words:
            raise ValueError(f"out: the bitmaps need {words} words, out has {out.shape[0]}")

        err = self._core.harvest(hwpts, iovas, lengths, page_size, out, no_clear)
        if err is not None:
            errno, hwpt, index = err
            flags = uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR if no_clear else 0
            raise KernelError.from_errno(
                errno,
                "IOMMU_HWPT_GET_DIRTY_BITMAP",
                {
                    "hwpt_id": hwpt,
                    "flags": flags,
                    "iova": int(iovas[index]),
                    "length": int(lengths[index]),
                    "page_size": page_size,
                    "range_index": index,
                },
            )
        bitmaps, start = [], 0
        for n in lengths.tolist():
            end = start + bitmap.words_for_length(n, page_size)
            bitmaps.append(out[start:end])
            start = end
        return Harvest(page_size, iovas, lengths, bitmaps, out)


def _hwpt_ids(hwpt_ids: Sequence[int], iommufd: Fd | int) -> NDArray[np.uint32]:
    ids = list(hwpt_ids)
    if not ids:
        raise ValueError("hwpt_ids: expected at least one HWPT id, got none")
    for h in ids:
        if isinstance(h, ObjectId):
            h.check(iommufd)  # a typed id must live in this harvester's iommufd
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or not 0 < h < 1 << 32:
            raise ValueError(f"hwpt_ids: expected object ids in [1, 2**32), got {h!r}")
    return np.array([int(h) for h in ids], dtype=np.uint32)


def _ranges(ranges: Any, page_size: int) -> tuple[U64, U64]:
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise ValueError(f"page_size: expected an int, got {page_size!r}")
    if page_size <= 0 or page_size & (page_size - 1):
        raise ValueError(f"page_size: expected a power of two, got {page_size}")
    pairs = u64_pairs("ranges", list(ranges))
    for i, (iova, length) in enumerate(pairs.tolist()):
        if length <= 0 or iova < 0 or iova + length > 1 << 64:
            raise ValueError(f"{_row(i, iova, length)} is empty or outside the 64-bit IOVA space")
        if iova % page_size or length % page_size:
            raise ValueError(f"{_row(i, iova, length)} is not a multiple of {page_size=:#x}")
    return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])


def _row(i: int, iova: int, length: int) -> str:
    return f"ranges: row {i} (iova={iova:#x}, length={length:#x})"


def _total_words(lengths: U64, page_size: int) -> int:
    return sum(bitmap.words_for_length(n, page_size) for n in lengths.tolist())
