"""Deliberately simple pure-Python models of the IOVA allocator and the translation map.

They are the oracles of the differential tests: a sorted list and linear scans, written for
obviousness rather than speed, with the same semantics as fastmap.allocator:

* Ranges are (start, last) with last inclusive, inside [0, 2**64 - 1].
* Free space is every byte not covered by an entry; a "gap" is a maximal run of free bytes.
* A request (length, align, hint_va) wants iova ≡ phase (mod modulus): modulus = align and
  phase = 0 without a hint; with one, modulus = max(align, H) (H = the largest huge-page size
  <= length, else 1) and phase = hint_va mod modulus. In a gap [s, e] the candidate is the
  lowest x >= s with that residue; it fits if x + length - 1 <= e.
* first-fit takes the lowest-address gap that fits; best-fit the smallest gap that fits,
  lowest address on ties. Either way the IOVA is the gap's lowest fitting candidate.

Errors are raised as RefError(errno), which tests compare with the real allocator's errno.
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Iterable, Iterator

U64_MAX = (1 << 64) - 1


class RefError(Exception):
    def __init__(self, err: int, index: int | None = None) -> None:
        super().__init__(errno.errorcode.get(err, str(err)))
        self.errno = err
        self.index = index


class ReferenceAllocator:
    def __init__(
        self,
        ranges: Iterable[tuple[int, int]] | None = None,
        reserved: Iterable[tuple[int, int]] = (),
        huge_page_sizes: Iterable[int] = (1 << 21, 1 << 30),
    ) -> None:
        # Sorted by start: [start, last, is_reserved].
        self.entries: list[tuple[int, int, bool]] = []
        self.huge_page_sizes = list(huge_page_sizes)
        if ranges is not None:
            for start, last in self._complement(list(ranges)):
                self.reserve(start, last)
        for start, last in reserved:
            self.reserve(start, last)

    @staticmethod
    def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        out = []
        pos = 0  # first byte not known to be allowed
        for start, last in sorted(ranges):
            if start > pos:
                out.append((pos, start - 1))
            pos = max(pos, last + 1)
        if pos <= U64_MAX:
            out.append((pos, U64_MAX))
        return out

    # -- helpers --

    def gaps(self) -> Iterator[tuple[int, int]]:
        pos = 0
        for start, last, _ in self.entries:
            if start > pos:
                yield (pos, start - 1)
            pos = last + 1
        if pos <= U64_MAX:
            yield (pos, U64_MAX)

    def _insert(self, start: int, last: int, is_reserved: bool) -> None:
        self.entries.append((start, last, is_reserved))
        self.entries.sort()

    def _overlapping(self, start: int, last: int) -> list[tuple[int, int, bool]]:
        return [e for e in self.entries if e[0] <= last and e[1] >= start]

    def _constraint(self, length: int, align: int, hint_va: int | None) -> tuple[int, int]:
        if length == 0 or align == 0 or align & (align - 1):
            raise RefError(errno.EINVAL)
        if hint_va is None:
            return align, 0
        huge = max([h for h in self.huge_page_sizes if h <= length], default=1)
        modulus = max(align, huge)
        return modulus, hint_va % modulus

    @staticmethod
    def _place(gap: tuple[int, int], length: int, modulus: int, phase: int) -> int | None:
        s, e = gap
        x = s + (phase - s) % modulus
        if x + length - 1 <= e:
            return x
        return None

    # -- operations --

    def alloc(self, length: int, align: int, hint_va: int | None = None, fit: str = "first") -> int:
        modulus, phase = self._constraint(length, align, hint_va)
        chosen: tuple[int, int, int] | None = None  # (gap size, gap start, iova)
        for gap in self.gaps():
            x = self._place(gap, length, modulus, phase)
            if x is None:
                continue
            if fit == "first":
                chosen = (0, gap[0], x)
                break
            size = gap[1] - gap[0] + 1
            if chosen is None or size < chosen[0]:
                chosen = (size, gap[0], x)
        if chosen is None:
            raise RefError(errno.ENOSPC)
        self._insert(chosen[2], chosen[2] + length - 1, False)
        return chosen[2]

    def alloc_fixed(self, iova: int, length: int) -> int:
        if length == 0:
            raise RefError(errno.EINVAL)
        last = iova + length - 1
        if last > U64_MAX:
            raise RefError(errno.EOVERFLOW)
        hits = self._overlapping(iova, last)
        if hits:
            raise RefError(errno.EADDRNOTAVAIL if hits[0][2] else errno.EEXIST)
        self._insert(iova, last, False)
        return iova

    def free(self, iova: int, length: int | None = None) -> tuple[int, int]:
        if length is None:
            for i, (start, last, is_reserved) in enumerate(self.entries):
                if start == iova:
                    if is_reserved:
                        raise RefError(errno.EPERM)
                    del self.entries[i]
                    return (start, last)
            raise RefError(errno.ENOENT)
        if length == 0:
            raise RefError(errno.EINVAL)
        end = iova + length - 1
        if end > U64_MAX:
            raise RefError(errno.EOVERFLOW)
        for i, (start, last, is_reserved) in enumerate(self.entries):
            if start <= iova <= last:
                if is_reserved:
                    raise RefError(errno.EPERM)
                if end > last:
                    raise RefError(errno.ENOENT)
                del self.entries[i]
                if start < iova:
                    self._insert(start, iova - 1, False)
                if end < last:
                    self._insert(end + 1, last, False)
                return (iova, end)
        raise RefError(errno.ENOENT)

    def bulk_alloc(
        self,
        lengths: list[int],
        align: int,
        hint_vas: list[int] | None = None,
        fit: str = "first",
    ) -> list[int]:
        saved = copy.copy(self.entries)
        out = []
        for i, length in enumerate(lengths):
            try:
                out.append(
                    self.alloc(length, align, None if hint_vas is None else hint_vas[i], fit)
                )
            except RefError as e:
                self.entries = saved
                raise RefError(e.errno, i) from None
        return out

    def bulk_free(self, iovas: list[int]) -> None:
        saved = copy.copy(self.entries)
        for i, iova in enumerate(iovas):
            try:
                self.free(iova)
            except RefError as e:
                self.entries = saved
                raise RefError(e.errno, i) from None

    def reserve(self, start: int, last: int) -> None:
        if start > last:
            raise RefError(errno.EINVAL)
        if any(not r for _, _, r in self._overlapping(start, last)):
            raise RefError(errno.EEXIST)
        # Merge with reserved entries that overlap or touch.
        lo, hi = start, last
        keep = []
        for s, la, r in self.entries:
            if r and s <= last + 1 and la + 1 >= start:
                lo, hi = min(lo, s), max(hi, la)
            else:
                keep.append((s, la, r))
        self.entries = keep
        self._insert(lo, hi, True)

    # -- queries --

    def find(self, iova: int) -> tuple[int, int, bool] | None:
        for e in self.entries:
            if e[0] <= iova <= e[1]:
                return e
        return None

    def contains(self, iova: int) -> bool:
        e = self.find(iova)
        return e is not None and not e[2]

    def largest_free_gap(self) -> tuple[int, int] | None:
        best: tuple[int, int] | None = None
        for gap in self.gaps():
            if best is None or gap[1] - gap[0] > best[1] - best[0]:
                best = gap
        return best

    def allocated(self) -> list[tuple[int, int]]:
        return [(s, la) for s, la, r in self.entries if not r]

    def reserved(self) -> list[tuple[int, int]]:
        return [(s, la) for s, la, r in self.entries if r]


class ReferenceTranslationMap:
    """A list of (va, iova, length) mappings, disjoint in both spaces."""

    def __init__(self) -> None:
        self.mappings: list[tuple[int, int, int]] = []

    def insert(self, va: int, iova: int, length: int) -> None:
        if length == 0:
            raise RefError(errno.EINVAL)
        if va + length - 1 > U64_MAX or iova + length - 1 > U64_MAX:
            raise RefError(errno.EOVERFLOW)
        for _, i, n in self.mappings:
            if i <= iova + length - 1 and iova <= i + n - 1:
                raise RefError(errno.EEXIST)
        for v, _, n in self.mappings:
            if v <= va + length - 1 and va <= v + n - 1:
                raise RefError(errno.EADDRINUSE)
        self.mappings.append((va, iova, length))
        self.mappings.sort(key=lambda m: m[1])

    def remove(self, iova: int) -> tuple[int, int, int]:
        for k, m in enumerate(self.mappings):
            if m[1] == iova:
                del self.mappings[k]
                return m
        raise RefError(errno.ENOENT)

    def translate_va(self, va: int) -> int | None:
        for v, i, n in self.mappings:
            if v <= va < v + n:
                return i + (va - v)
        return None

    def translate_iova(self, iova: int) -> int | None:
        for v, i, n in self.mappings:
            if i <= iova < i + n:
                return v + (iova - i)
        return None
