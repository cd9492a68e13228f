"""Dirty bitmaps: fast operations on the kernel's GET_DIRTY_BITMAP layout.

A bitmap is a 1-D ``numpy.uint64`` array plus a bit count ``nbits``: bit ``i`` (word
``i // 64``, bit ``i % 64``, least significant first, little-endian words) says whether page
``i`` is dirty. This is exactly what IOMMU_HWPT_GET_DIRTY_BITMAP writes, so bitmaps from the
harvester need no conversion. Bits at or past ``nbits`` in the last word are ignored on input
and zero on output.

Runs of set bits ("ranges") are ``(N, 2)`` uint64 arrays of ``[first_page, page_count]`` rows
in increasing page order; ``to_ranges`` never emits empty or touching runs.

Every function checks its arguments and raises ValueError naming the argument and the bad
value (a TypeError for a non-integer, as everywhere in fastmap: see fastmap._checks); the work
itself runs in C++ without the GIL.
"""

from __future__ import annotations

from typing import Any, SupportsIndex

import numpy as np
from numpy.typing import NDArray

from fastmap import _core
from fastmap._checks import u64, u64_pairs

__all__ = [
    "convert",
    "converted_nbits",
    "count_floor",
    "from_ranges",
    "or_merge",
    "popcount",
    "to_ranges",
    "words_for",
    "words_for_length",
]

Bitmap = NDArray[np.uint64]


def words_for(nbits: int) -> int:
    """The number of uint64 words a bitmap of ``nbits`` bits needs."""
    _check_count("nbits", nbits)
    return (nbits + 63) // 64


def words_for_length(length: int, page_size: int) -> int:
    """The uint64 words of the bitmap for ``length`` bytes at ``page_size`` bytes a page (a
    partial last page gets its bit). Python's one definition; the core's is
    ``_core.bitmap_words``, and a test holds the two equal."""
    _check_count("length", length)
    _check_count("page_size", page_size)
    if page_size == 0:
        raise ValueError("page_size must be positive")
    return words_for(-(-length // page_size))


def or_merge(dst: Bitmap, src: Bitmap) -> None:
    """``dst |= src`` in place (both the same length): merges dirty sets."""
    _check_bitmap("dst", dst, writable=True)
    _check_bitmap("src", src)
    if dst.shape != src.shape:
        raise ValueError(f"src: length {src.shape[0]} differs from dst's {dst.shape[0]}")
    _core.bitmap_or_merge(dst, np.ascontiguousarray(src))


def popcount(bm: Bitmap, nbits: SupportsIndex | None = None) -> int:
    """Set bits among the first ``nbits`` (default: every bit of ``bm``)."""
    bm, nbits = _bitmap_and_bits(bm, nbits)
    return int(_core.bitmap_popcount(bm, nbits))


def count_floor(bm: Bitmap) -> int:
    """Set bits in every word of ``bm``, in one plain pass.

    The cheapest possible whole-bitmap scan, used as the floor that ``to_ranges`` is
    benchmarked against.
    """
    _check_bitmap("bm", bm)
    return int(_core.bitmap_count_floor(np.ascontiguousarray(bm)))


def to_ranges(bm: Bitmap, nbits: SupportsIndex | None = None) -> NDArray[np.uint64]:
    """Runs of set bits among the first ``nbits`` as ``(N, 2)`` ``[first_page, page_count]``."""
    bm, nbits = _bitmap_and_bits(bm, nbits)
    result: NDArray[np.uint64] = _core.bitmap_to_ranges(bm, nbits)
    return result


def from_ranges(ranges: Any, nbits: SupportsIndex) -> Bitmap:
    """A new bitmap of ``nbits`` bits with the pages of every ``[first_page, page_count]``.

    ``ranges`` is anything numpy reads as ``(N, 2)`` non-negative integers; runs may overlap
    and may be empty, but each must end at or before ``nbits``.
    """
    _check_count("nbits", nbits)
    pairs = u64_pairs("ranges", ranges)
    result, bad = _core.bitmap_from_ranges(pairs, int(nbits))
    if bad >= 0:
        first, count = (int(x) for x in pairs[bad])
        raise ValueError(f"ranges: row {bad} [{first}, {count}] ends past nbits={nbits}")
    out: Bitmap = result
    return out


def converted_nbits(nbits: int, from_page: int, to_page: int) -> int:
    """How many ``to_page`` pages cover ``nbits`` pages of ``from_page`` bytes."""
    _check_count("nbits", nbits)
    _check_page("from_page", from_page)
    _check_page("to_page", to_page)
    if to_page >= from_page:
        return -(-nbits // (to_page // from_page))
    return nbits * (from_page // to_page)


def convert(bm: Bitmap, nbits: int, from_page: int, to_page: int) -> Bitmap:
    """Re-expresses a bitmap of ``nbits`` pages of ``from_page`` bytes in ``to_page`` pages.

    Coarser (e.g. 4 KiB to 2 MiB): a page is dirty if any of its small pages is. Finer (2 MiB
    to 4 KiB): every small page of a dirty page is dirty. The result has
    ``converted_nbits(nbits, from_page, to_page)`` bits.
    """
    bm, nbits = _bitmap_and_bits(bm, nbits)
    out_bits = converted_nbits(nbits, from_page, to_page)
    if out_bits >= 1 << 63:
        raise ValueError(
            f"nbits: {nbits} pages of {from_page} bytes make {out_bits} pages of {to_page}"
        )
    result: Bitmap = _core.bitmap_convert(bm, nbits, from_page, to_page)
    return result


def _check_count(name: str, value: object) -> None:
    u64(name, value)


def _check_page(name: str, value: object) -> None:
    _check_count(name, value)
    v = int(value)  # type: ignore[call-overload]
    if v == 0 or v & (v - 1):
        raise ValueError(f"{name}: expected a power of two, got {value}")


def _check_bitmap(name: str, bm: object, writable: bool = False) -> None:
    if not isinstance(bm, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.uint64 array, got {type(bm).__name__}")
    if bm.dtype != np.uint64 or bm.ndim != 1:
        raise ValueError(
            f"{name}: expected a 1-D numpy.uint64 array, got dtype={bm.dtype} shape={bm.shape}"
        )
    if writable and not (bm.flags.c_contiguous and bm.flags.writeable):
        raise ValueError(f"{name}: must be writable and contiguous (it is updated in place)")


def _bitmap_and_bits(bm: object, nbits: SupportsIndex | None) -> tuple[Bitmap, int]:
    _check_bitmap("bm", bm)
    assert isinstance(bm, np.ndarray)
    if nbits is None:
        nbits = 64 * bm.shape[0]
    _check_count("nbits", nbits)
    nbits = int(nbits)
    if nbits > 64 * bm.shape[0]:
        raise ValueError(f"nbits: {nbits} bits need {words_for(nbits)} words, bm has {bm.shape[0]}")
    return np.ascontiguousarray(bm), nbits
