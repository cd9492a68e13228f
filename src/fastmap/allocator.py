"""IOVA allocation and VA <-> IOVA translation.

:class:`IovaAllocator` hands out IOVA ranges inside the usable windows of an IOAS (for
example the ranges IOMMU_IOAS_IOVA_RANGES reports), avoiding reserved ranges such as the MSI
window. It finds the lowest fitting address (``fit="first"``) or the smallest fitting gap
(``fit="best"``) in O(log n), can keep a VA's offset inside a huge page so the IOMMU may use
2 MiB / 1 GiB IOPTEs, and takes batches as numpy arrays in one call without the GIL.

VA <-> IOVA translation of what an IOAS maps lives with its mappings, in the engine
(`Ioas.translate_va` / `translate_va_bulk`); there is no second index.

All addresses are Python ints in [0, 2**64 - 1]; a range is ``(start, last)`` with ``last``
inclusive, so the whole 64-bit space is expressible.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from fastmap import _core
from fastmap._checks import U64_MAX, u64, u64_array
from fastmap.errors import (
    AllocationError,
    AllocatorError,
    InvalidRequestError,
    RangeInUseError,
    RangeNotFoundError,
    RangeReservedError,
)

__all__ = [
    "DEFAULT_HUGE_PAGE_SIZES",
    "U64_MAX",
    "AllocationError",
    "AllocatorError",
    "Fit",
    "InvalidRequestError",
    "IovaAllocator",
    "IovaRange",
    "RangeInUseError",
    "RangeNotFoundError",
    "RangeReservedError",
]

DEFAULT_HUGE_PAGE_SIZES: tuple[int, ...] = (1 << 21, 1 << 30)
PAGE_SIZE = 4096

Fit = Literal["first", "best"]
_FITS: dict[str, int] = {"first": 0, "best": 1}

U64Array = npt.NDArray[np.uint64]
BoolArray = npt.NDArray[np.bool_]


# ---- values ----------------------------------------------------------------------------------


class IovaRange(NamedTuple):
    """An inclusive byte range [start, last]."""

    start: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.start + 1

    def __repr__(self) -> str:
        return f"IovaRange({self.start:#x}..{self.last:#x}, {self.length:#x} bytes)"


# tuple.__new__ skips the NamedTuple's Python-level __new__: the hot paths build many.
_new_range = tuple.__new__


# ---- argument checking -----------------------------------------------------------------------


def _u64(name: str, value: int) -> int:
    try:
        return u64(name, value)
    except ValueError as e:
        raise InvalidRequestError(str(e), errno.EINVAL) from None


def _range(name: str, r: tuple[int, int]) -> tuple[int, int]:
    start, last = (_u64(f"{name} start", r[0]), _u64(f"{name} last", r[1]))
    if start > last:
        raise InvalidRequestError(
            f"{name} ({start:#x}, {last:#x}): start is after last (ranges are (start, last) "
            "with last inclusive)",
            errno.EINVAL,
        )
    return start, last


def _u64_array(name: str, values: npt.ArrayLike) -> U64Array:
    try:
        return u64_array(name, values)
    except ValueError as e:
        raise InvalidRequestError(str(e), errno.EINVAL) from None


def _fit(fit: str) -> int:
    try:
        return _FITS[fit]
    except KeyError:
        raise InvalidRequestError(
            f"fit must be 'first' or 'best', got {fit!r}", errno.EINVAL
        ) from None


def _check_align(align: int) -> int:
    a = _u64("align", align)
    if a == 0 or a & (a - 1):
        raise InvalidRequestError(f"align={a:#x} is not a power of two", errno.EINVAL)
    return a


# ---- the allocator ---------------------------------------------------------------------------


class IovaAllocator:
    """Allocates IOVA ranges inside ``ranges`` (default: the whole 64-bit space), never
    touching ``reserved``.

    Allocations are distinct ranges even when they touch; free space is simply what lies
    between them, so freeing merges it with neighbouring free space. Reserved ranges (and
    everything outside ``ranges``) are permanently in use and cannot be freed.

    ``huge_page_sizes`` are the IOPTE sizes whose alignment ``hint_va`` preserves.
    Thread-safe: each call holds the allocator's lock; batch calls release the GIL.
    """

    def __init__(
        self,
        ranges: Iterable[tuple[int, int]] | None = None,
        reserved: Iterable[tuple[int, int]] = (),
        *,
        huge_page_sizes: Iterable[int] = DEFAULT_HUGE_PAGE_SIZES,
    ) -> None:
        self._a = _core.IovaAllocator()
        sizes = [_u64("huge page size", s) for s in huge_page_sizes]
        for s in sizes:
            if s == 0 or s & (s - 1):
                raise InvalidRequestError(
                    f"huge page size {s:#x} is not a power of two", errno.EINVAL
                )
        self._raise(self._a.set_huge_page_sizes(sizes), "set_huge_page_sizes")
        if ranges is not None:
            allowed = [_range("allowed range", r) for r in ranges]
            self._raise(self._a.restrict_to(allowed), "restrict_to")
        for r in reserved:
            self.reserve(*r)

    def __repr__(self) -> str:
        gap = self.largest_free_gap()
        return (
            f"<IovaAllocator: {len(self)} allocations, {self.reserved_count} reserved ranges, "
            f"largest free gap {gap!r}>"
        )

    # -- errors --

    def _raise(
        self, err: int, what: str, start: int = 0, last: int = 0, index: int | None = None
    ) -> None:
        if err == 0:
            return
        e = -err
        rng = f"[{start:#x}, {last:#x}]"
        if e == errno.EOVERFLOW:
            raise InvalidRequestError(
                f"{what} at {start:#x}: the range runs past the end of the 64-bit space", e, index
            )
        if e == errno.EINVAL:
            raise InvalidRequestError(f"{what} at {start:#x}: the length is 0", e, index)
        if e == errno.EEXIST:
            hit = self._first_allocation_in(start, last)
            raise RangeInUseError(
                f"{what} {rng} overlaps the allocation {hit!r}; free it first or pick another "
                "address",
                e,
                space="iova",
                start=start,
                last=last,
            )
        if e == errno.EADDRNOTAVAIL:
            hit = next(
                (r for r in self.reserved_ranges() if r.start <= last and start <= r.last), None
            )
            raise RangeReservedError(
                f"{what} {rng} touches the reserved range {hit!r} (a reserved region such as "
                "an MSI window, or space outside the allowed IOVA ranges)",
                e,
                index,
            )
        if e == errno.EPERM:
            raise RangeReservedError(
                f"{what} {rng} is a reserved range; it cannot be freed", e, index
            )
        if e == errno.ENOENT:
            raise RangeNotFoundError(
                f"{what}: nothing allocated at {rng}", address=start, index=index
            )
        if e == errno.ENOMEM:
            raise MemoryError(f"{what}: out of host memory for allocator nodes")
        raise AllocatorError(f"{what}: {errno.errorcode.get(e, e)}", e, index)

    def _first_allocation_in(self, start: int, last: int) -> IovaRange | None:
        starts, lasts = self.ranges()
        i = int(np.searchsorted(lasts, np.uint64(start)))
        if i < starts.size and int(starts[i]) <= last:
            return IovaRange(int(starts[i]), int(lasts[i]))
        return None

    def _no_space(
        self, length: int, align: int, hint_va: int | None, fit: Fit, index: int | None
    ) -> AllocationError:
        gap = self.largest_free_gap()
        where = "" if index is None else f" (batch element {index})"
        hint = "" if hint_va is None else f", keeping hint_va {hint_va:#x}'s huge-page offset"
        have = "no free space at all" if gap is None else f"the largest free gap is {gap!r}"
        return AllocationError(
            f"no free IOVA range of {length:#x} bytes aligned to {align:#x}{hint} "
            f"({fit}-fit){where}; {have}",
            length=length,
            align=align,
            hint_va=hint_va,
            fit=fit,
            index=index,
            largest_free_gap=gap,
        )

    # -- allocation --

    def alloc(
        self, length: int, align: int = PAGE_SIZE, hint_va: int | None = None, fit: Fit = "first"
    ) -> int:
        """Allocates ``length`` bytes and returns the IOVA.

        Without ``hint_va`` the IOVA is a multiple of ``align``. With it, the IOVA keeps
        ``hint_va``'s offset modulo max(align, H), H being the largest huge-page size that
        is <= length: iova ≡ hint_va (mod 2 MiB) for a 2 MiB+ buffer, so the mapping can use
        huge IOPTEs; ``align`` then acts as the page granule whose offset is kept.
        """
        # Fast path for well-formed plain ints; anything else gets the full checks below.
        if (
            type(length) is int
            and type(align) is int
            and 0 < length <= U64_MAX
            and 0 < align <= U64_MAX
            and not align & (align - 1)
            and (hint_va is None or (type(hint_va) is int and 0 <= hint_va <= U64_MAX))
            and fit in _FITS
        ):
            err, iova = self._a.alloc(length, align, hint_va, _FITS[fit])
            if err == 0:
                return iova
        n = _u64("length", length)
        a = _check_align(align)
        h = None if hint_va is None else _u64("hint_va", hint_va)
        err, iova = self._a.alloc(n, a, h, _fit(fit))
        if err == -errno.ENOSPC:
            raise self._no_space(n, a, h, fit, None)
        self._raise(err, "alloc")
        return iova

    def alloc_fixed(self, iova: int, length: int) -> int:
        """Claims exactly [iova, iova + length - 1], e.g. for IOVA = VA or IOVA = guest
        physical identity maps. Returns ``iova``."""
        i, n = _u64("iova", iova), _u64("length", length)
        self._raise(self._a.alloc_fixed(i, n), "alloc_fixed", i, i + max(n, 1) - 1)
        return i

    def free(self, iova: int, length: int | None = None) -> IovaRange:
        """Frees the allocation starting at ``iova`` or, with ``length``, the bytes
        [iova, iova + length - 1] inside one allocation (the rest of it stays allocated).
        Returns the range freed."""
        if length is None and type(iova) is int and 0 <= iova <= U64_MAX:
            err, start, last = self._a.free(iova)
            if err == 0:
                return _new_range(IovaRange, (start, last))
        i = _u64("iova", iova)
        if length is None:
            err, start, last = self._a.free(i)
            if err == -errno.ENOENT:
                raise RangeNotFoundError(
                    f"free: no allocation starts at {i:#x} (freed already, or not the start of "
                    "an allocation: find() names the range holding an address)",
                    address=i,
                )
            self._raise(err, "free", i, i)
            return IovaRange(start, last)
        n = _u64("length", length)
        err = self._a.free_range(i, n)
        if err == -errno.ENOENT:
            raise RangeNotFoundError(
                f"free: [{i:#x}, {i + n - 1:#x}] does not lie inside one allocation", address=i
            )
        self._raise(err, "free", i, i + max(n, 1) - 1)
        return IovaRange(i, i + n - 1)

    def bulk_alloc(
        self,
        lengths: npt.ArrayLike,
        align: int = PAGE_SIZE,
        hint_vas: npt.ArrayLike | None = None,
        fit: Fit = "first",
    ) -> U64Array:
        """Allocates one range per length, in order, in a single call without the GIL.
        All or nothing: on failure nothing stays allocated and the error names the index."""
        lens = _u64_array("lengths", lengths)
        a = _check_align(align)
        hints = None if hint_vas is None else _u64_array("hint_vas", hint_vas)
        if hints is not None and hints.shape != lens.shape:
            raise InvalidRequestError(
                f"hint_vas has {hints.size} entries for {lens.size} lengths", errno.EINVAL
            )
        f = _fit(fit)
        err, failed, out = self._a.bulk_alloc(lens, a, hints, f)
        if err == -errno.ENOSPC:
            h = None if hints is None else int(hints[failed])
            raise self._no_space(int(lens[failed]), a, h, fit, failed)
        if err == -errno.EINVAL:
            raise InvalidRequestError(f"bulk_alloc: lengths[{failed}] is 0", errno.EINVAL, failed)
        self._raise(err, "bulk_alloc", index=failed)
        return out

    def bulk_free(self, iovas: npt.ArrayLike) -> None:
        """Frees the allocations starting at each IOVA, in one call without the GIL.
        All or nothing: if one is not an allocation start, nothing is freed."""
        arr = _u64_array("iovas", iovas)
        err, failed = self._a.bulk_free(arr)
        if err == 0:
            return
        at = int(arr[failed])
        if err == -errno.ENOENT:
            raise RangeNotFoundError(
                f"bulk_free: iovas[{failed}] = {at:#x} is not the start of an allocation "
                "(freed twice, or never allocated); nothing was freed",
                address=at,
                index=failed,
            )
        self._raise(err, f"bulk_free: iovas[{failed}]", at, at, index=failed)

    def reserve(self, start: int, last: int) -> None:
        """Makes [start, last] permanently unusable, e.g. a device's MSI window.
        Fails with RangeInUseError if an allocation is there."""
        s, la = _range("reserved range", (start, last))
        self._raise(self._a.reserve(s, la), "reserve", s, la)

    # -- queries --

    def find(self, iova: int) -> IovaRange | None:
        """The allocation holding ``iova``, if any."""
        e = self._a.find(_u64("iova", iova))
        if e is None or e[2]:
            return None
        return IovaRange(e[0], e[1])

    def is_reserved(self, iova: int) -> bool:
        """Whether ``iova`` is reserved or outside the allowed ranges."""
        e = self._a.find(_u64("iova", iova))
        return e is not None and e[2]

    def contains(self, iova: int) -> bool:
        """Whether ``iova`` lies inside an allocation."""
        return self._a.contains(_u64("iova", iova))

    def __contains__(self, iova: object) -> bool:
        return isinstance(iova, int) and 0 <= iova <= U64_MAX and self._a.contains(iova)

    def largest_free_gap(self) -> IovaRange | None:
        """The largest free range (lowest address on ties), or None when nothing is free."""
        g = self._a.largest_free_gap()
        return None if g is None else IovaRange(*g)

    def __len__(self) -> int:
        return self._a.allocated_count

    @property
    def reserved_count(self) -> int:
        """How many (merged) reserved ranges there are, counting space outside the allowed
        ranges."""
        return self._a.reserved_count

    @property
    def huge_page_sizes(self) -> tuple[int, ...]:
        return tuple(self._a.huge_page_sizes)

    def ranges(self) -> tuple[U64Array, U64Array]:
        """(starts, lasts) of every allocation in address order."""
        starts, lasts, _ = self._a.ranges(False)
        return starts, lasts

    def reserved_ranges(self) -> list[IovaRange]:
        """Every reserved range, including space outside the allowed ranges."""
        starts, lasts, reserved = self._a.ranges(True)
        return [
            IovaRange(int(s), int(la))
            for s, la, r in zip(starts.tolist(), lasts.tolist(), reserved.tolist(), strict=True)
            if r
        ]

    def __iter__(self) -> Iterator[IovaRange]:
        starts, lasts = self.ranges()
        for s, la in zip(starts.tolist(), lasts.tolist(), strict=True):
            yield IovaRange(s, la)

    def check_invariants(self) -> bool:
        """Walks the whole structure checking every internal invariant (for tests)."""
        return self._a.check_invariants()


# ---- translation -----------------------------------------------------------------------------
