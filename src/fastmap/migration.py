"""Dirty-page tracking for live migration, over the VFIO containers of an address space.

    with DirtyTracker(space) as tracker:        # start: every container starts tracking
        ...                                      # devices DMA into guest RAM
        result = tracker.sync()                  # what they wrote since the last sync
        for d in result.blocks:                  # one entry per RAM block
            d.bitmap, d.page_ranges              # numpy bitmap, (N, 2) [first_page, count]
            for offset, length in d.byte_ranges: # (N, 2) [offset, length] in bytes
                send(d.block.read(offset, length))

This is QEMU's VFIO migration flow (§4.5 of the reference): start = each container's
set_dirty_page_tracking(True) (an iommufd container switches every DIRTY_TRACKING HWPT, and
sets them back if one fails; a Type1 container uses VFIO_IOMMU_DIRTY_PAGES START), sync =
query the dirty bitmap of every RAM block from every container and OR the answers, stop =
set_dirty_page_tracking(False). For an iommufd container all blocks and all dirty HWPTs are
harvested by one call into the C++ `DirtyHarvester`, which runs without the GIL.

The tracker never under-reports. It reports every page of every block dirty:

* while a container has a device whose writes its bitmaps cannot see (a HWPT without
  DIRTY_TRACKING, a Type1 container without the migration capability), warning once with
  `UntrackedDevicesWarning`, as QEMU marks the whole range dirty for such a container;
* for a block added while tracking (its contents are all new to the destination);
* for the first sync of a container that appeared while tracking, and after a failed
  stop (QEMU's rollback re-enables tracking, which clears the dirty bits);
* for the first sync after a HWPT came or went in a container (a device attached with a
  new HWPT, which starts tracking then, or the last device of a HWPT left, taking the
  HWPT's dirty bits with it).

And it keeps what an unmap would lose: a range unmapped while tracking is on (a block
removed from the space, or a `dma_unmap` of part of one) hands its dirty bits to the tracker
just before it goes (`Container.unmap_dirty_sinks`), and the next sync reports them: for
blocks still in the space merged into their bitmaps, for removed blocks in
`SyncResult.removed` (their memory is gone; the entry says which guest pages were written).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from fastmap import bitmap
from fastmap.errors import DirtyTrackingWarning, KernelError
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.container import Container
from fastmap.lifecycle.vfio_iommufd import Hwpt, IommufdContainer
from fastmap.ram import PAGE_SIZE, RamBlock

__all__ = ["BlockDirty", "DirtyTracker", "SyncResult", "UntrackedDevicesWarning"]

log = logging.getLogger("fastmap.migration")

U64 = NDArray[np.uint64]


class UntrackedDevicesWarning(DirtyTrackingWarning):
    """A container has a device whose DMA writes its dirty bitmaps cannot see: every sync
    reports all of guest RAM dirty (so pre-copy resends everything each round)."""


@dataclass(frozen=True, eq=False)
class BlockDirty:
    """The pages of one RAM block written since the previous sync.

    Bit i of `bitmap` (kernel layout, see fastmap.bitmap) is the page at guest address
    ``block.gpa + i * page_size``; `nbits` bits count.
    """

    block: RamBlock
    page_size: int
    bitmap: U64
    nbits: int
    #: Every page is reported: a device the container cannot track, a new block, or lost bits.
    all_dirty: bool = False
    #: Why `all_dirty` (empty when not).
    reason: str = ""

    @cached_property
    def dirty_pages(self) -> int:
        return bitmap.popcount(self.bitmap, self.nbits)

    # Three views of the dirty runs, each (N, 2) uint64, each named for its unit.
    @cached_property
    def page_ranges(self) -> U64:
        """Dirty runs as ``[first_page, page_count]``, in pages of `page_size`."""
        return bitmap.to_ranges(self.bitmap, self.nbits)

    @cached_property
    def byte_ranges(self) -> U64:
        """Dirty runs as ``[offset, length]`` in bytes into the block (the last run clipped
        to the block's end)."""
        out = self.page_ranges * np.uint64(self.page_size)
        if len(out):
            end = out[-1, 0] + out[-1, 1]
            if end > self.block.length:
                out[-1, 1] -= end - np.uint64(self.block.length)
        return out

    @cached_property
    def gpa_ranges(self) -> U64:
        """Dirty runs as ``[guest address, length]`` in bytes."""
        out = self.byte_ranges.copy()
        out[:, 0] += np.uint64(self.block.gpa)
        return out

    def __repr__(self) -> str:
        state = f" all_dirty ({self.reason})" if self.all_dirty else ""
        return (
            f"<BlockDirty {self.block.name}: {self.dirty_pages}/{self.nbits} pages of "
            f"{self.page_size:#x} dirty in {len(self.page_ranges)} runs{state}>"
        )


@dataclass(frozen=True, eq=False)
class SyncResult:
    """One sync: the dirty pages of every RAM block, and of blocks removed since the last."""

    page_size: int
    blocks: list[BlockDirty]
    #: Blocks removed from the space while tracking, with the pages written before they went
    #: (their memory is freed: the ranges say what was written, the bytes are gone).
    removed: list[BlockDirty] = field(default_factory=list)
    #: Wall time of the sync (harvest and merge).
    seconds: float = 0.0

    @property
    def dirty_pages(self) -> int:
        """Dirty pages over the blocks still in the space."""
        return sum(b.dirty_pages for b in self.blocks)

    @property
    def dirty_bytes(self) -> int:
        return sum(int(r[:, 1].sum()) for r in (b.byte_ranges for b in self.blocks) if len(r))

    def __iter__(self) -> Iterator[BlockDirty]:
        return iter(self.blocks)

    def for_block(self, block: RamBlock) -> BlockDirty:
        for b in self.blocks:
            if b.block is block:
                return b
        raise KeyError(block)

    def __repr__(self) -> str:
        all_dirty = sum(1 for b in self.blocks if b.all_dirty)
        parts = [
            f"{self.dirty_pages} dirty pages ({self.dirty_bytes:#x} bytes)",
            f"{len(self.blocks)} blocks",
        ]
        if all_dirty:
            parts.append(f"{all_dirty} all dirty")
        if self.removed:
            parts.append(f"{len(self.removed)} removed")
        return f"<SyncResult {', '.join(parts)} in {self.seconds * 1e3:.1f} ms>"


@dataclass
class _Unmapped:
    """Dirty guest ranges of `block` harvested at an unmap, waiting for the next sync."""

    block: RamBlock
    gpa_ranges: U64  # (N, 2) [gpa, length] bytes


class DirtyTracker:
    """Dirty-page tracking over an address space's containers (or given containers)."""

    def __init__(
        self,
        source: AddressSpace | Container | Sequence[Container],
        page_size: int = PAGE_SIZE,
    ) -> None:
        """`source`: an AddressSpace (its containers, also ones that appear later) or
        fixed containers. `page_size`: the granularity of the reported bitmaps (a power of
        two; the IOMMU reports at its IOPTE size, so a coarser size loses nothing)."""
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, not {page_size}")
        self.page_size = page_size
        self._space: AddressSpace | None = None
        self._fixed: list[Container] = []
        if isinstance(source, AddressSpace):
            self._space = source
        elif isinstance(source, Container):
            self._fixed = [source]
        else:
            self._fixed = list(source)
            if not self._fixed:
                raise ValueError("no containers to track")
        self._tracked: list[Container] = []
        self._known: dict[int, RamBlock] = {}  # blocks already reported (by id)
        self._fresh: set[int] = set()  # containers whose next sync must report everything
        self._hwpts: dict[int, list[Hwpt]] = {}  # each iommufd container's HWPTs at the last sync
        self._warned: set[int] = set()
        self._unmapped: list[_Unmapped] = []
        self.started = False

    # --- lifetime ------------------------------------------------------------------------
    def start(self) -> None:
        """Start tracking in every container: all or none (a failure stops the ones already
        started and propagates). Only writes from now on are reported."""
        if self.started:
            raise RuntimeError("the tracker is already started")
        containers = self._containers()
        started: list[Container] = []
        try:
            for c in containers:
                c.set_dirty_page_tracking(True)
                started.append(c)
        except BaseException:
            for c in reversed(started):
                try:
                    c.set_dirty_page_tracking(False)
                except KernelError as e:
                    log.error("stopping dirty tracking of %r after a failed start: %s", c, e)
            raise
        for c in containers:
            self._track(c)
        self._known = {id(b): b for b in self._blocks()}
        self._unmapped.clear()
        self._fresh.clear()
        self.started = True
        self._warn_untracked()

    def stop(self) -> None:
        """Stop tracking everywhere (idempotent). If a container fails to stop, it is left
        tracking (QEMU's rollback), the others are stopped, the first error propagates and
        the tracker stays started; its next sync reports everything, since the rollback's
        restart cleared the dirty bits."""
        if not self.started:
            return
        failed: list[Container] = []
        first: KernelError | None = None
        for c in list(self._tracked):
            if not any(c is x for x in c.space.containers):
                self._untrack(c)  # destroyed with its last device: nothing to stop
                continue
            try:
                c.set_dirty_page_tracking(False)
            except KernelError as e:
                failed.append(c)
                first = first or e
                continue
            self._untrack(c)
        if first is not None:
            self._fresh.update(id(c) for c in failed)
            raise first
        self._unmapped.clear()
        self.started = False

    def __enter__(self) -> DirtyTracker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
            return
        try:  # do not hide the exception that ends the block
            self.stop()
        except KernelError as e:
            log.error("stopping dirty tracking after %r failed: %s", exc, e)

    # --- sync ------------------------------------------------------------------------------------
    def sync(self) -> SyncResult:
        """The pages written since the previous sync (or start), per RAM block, read and
        cleared from every container (see the module doc for when all pages are reported)."""
        if not self.started:
            raise RuntimeError("start the tracker before syncing")
        t0 = time.perf_counter()
        self._follow_containers()
        blocks = self._blocks()
        ps = self.page_size
        bitmaps = [np.zeros(max(bitmap.words_for(self._nbits(b)), 1), np.uint64) for b in blocks]
        reasons = ["" for _ in blocks]

        for b in blocks:
            if b.gpa % ps:
                raise ValueError(f"{b!r} is not aligned to the tracker's page size {ps:#x}")
        for c in self._tracked:
            changed = self._hwpts_changed(c)
            if not c.tracks_all_devices:
                self._all(reasons, f"{_describe(c)} has devices it cannot track")
                continue
            self._harvest(c, blocks, bitmaps)  # also clears the bits of a fresh container
            if c.everything_dirty_reason:
                self._all(reasons, c.everything_dirty_reason)
            elif id(c) in self._fresh:
                self._all(reasons, "tracking (re)started in a container since the last sync")
            elif changed:
                self._all(reasons, f"HWPTs of {_describe(c)} came or went since the last sync")
        self._fresh.clear()
        for i, b in enumerate(blocks):
            if id(b) not in self._known:
                reasons[i] = reasons[i] or "block added while tracking"
        self._known = {id(b): b for b in blocks}

        index = {id(b): i for i, b in enumerate(blocks)}
        removed: dict[int, tuple[RamBlock, U64]] = {}
        for u in self._unmapped:
            at = index.get(id(u.block))
            if at is not None:
                _or_ranges(bitmaps[at], u.block, u.gpa_ranges, ps)
            else:
                bm = removed.get(id(u.block), (u.block, _zeros(u.block.length, ps)))[1]
                _or_ranges(bm, u.block, u.gpa_ranges, ps)
                removed[id(u.block)] = (u.block, bm)
        self._unmapped.clear()

        out = []
        for b, bm, why in zip(blocks, bitmaps, reasons, strict=True):
            n = self._nbits(b)
            if why:
                bm[:] = 0
                bitmap_all(bm, n)
            out.append(BlockDirty(b, ps, bm, n, all_dirty=bool(why), reason=why))
        gone = [BlockDirty(b, ps, bm, self._nbits(b)) for b, bm in removed.values()]
        return SyncResult(ps, out, gone, time.perf_counter() - t0)

    # --- containers ---------------------------------------------------------------------------
    @property
    def containers(self) -> list[Container]:
        """The containers being tracked."""
        return list(self._tracked)

    def _containers(self) -> list[Container]:
        return list(self._space.containers) if self._space is not None else list(self._fixed)

    def _blocks(self) -> list[RamBlock]:
        if self._space is not None:
            return self._space.blocks
        seen: dict[int, RamBlock] = {}
        for c in self._fixed:
            for b in c.space.blocks:
                seen.setdefault(id(b), b)
        return sorted(seen.values(), key=lambda b: b.gpa)

    def _track(self, c: Container) -> None:
        c.unmap_dirty_sinks.append(self._on_unmap)
        self._tracked.append(c)
        if isinstance(c, IommufdContainer):
            self._hwpts[id(c)] = list(c.hwpts)

    def _untrack(self, c: Container) -> None:
        if self._on_unmap in c.unmap_dirty_sinks:
            c.unmap_dirty_sinks.remove(self._on_unmap)
        self._tracked.remove(c)
        self._hwpts.pop(id(c), None)

    def _hwpts_changed(self, c: Container) -> bool:
        """Whether an iommufd container's HWPTs changed since the last sync. A HWPT that
        went took its dirty bits with it; one that came was allocated after tracking
        started, so it is not tracking: it starts now, and what its devices wrote before is
        unknown. Either way this sync must report everything. (HWPTs are compared as
        objects: the kernel reuses ids.)"""
        if not isinstance(c, IommufdContainer):
            return False
        before = self._hwpts.get(id(c), [])
        now = list(c.hwpts)
        self._hwpts[id(c)] = now
        new = [h for h in now if not any(h is b for b in before)]
        for h in new:
            if h.dirty_tracking and c.dirty_tracking:
                c.backend.set_dirty_tracking(h.id, True)
        return bool(new) or any(not any(b is h for h in now) for b in before)

    def _follow_containers(self) -> None:
        """Containers that appeared since the last sync start tracking (and report all);
        ones that are gone are dropped (their unmaps already reported their bits)."""
        current = self._containers()
        for c in list(self._tracked):
            if not any(c is x for x in current):
                self._untrack(c)
        for c in current:
            if not any(c is x for x in self._tracked):
                c.set_dirty_page_tracking(True)
                self._track(c)
                self._fresh.add(id(c))
        self._warn_untracked()

    def _warn_untracked(self) -> None:
        for c in self._tracked:
            if c.tracks_all_devices and not c.everything_dirty_reason:
                self._warned.discard(id(c))
            elif id(c) not in self._warned:
                self._warned.add(id(c))
                why = c.everything_dirty_reason or (
                    f"{_describe(c)} cannot track the DMA writes of every device "
                    f"(devices {[d.name for d in c.devices]})"
                )
                warnings.warn(
                    UntrackedDevicesWarning(f"{why}: every sync reports all guest RAM dirty"),
                    stacklevel=3,
                )

    # --- harvesting -----------------------------------------------------------------------------
    def _harvest(self, c: Container, blocks: list[RamBlock], bitmaps: list[U64]) -> None:
        if not blocks:
            return
        ps = self.page_size
        if isinstance(c, IommufdContainer):
            harvest = c.query_dirty_ranges([(b.gpa, self._span(b)) for b in blocks], ps)
            for bm, got in zip(bitmaps, harvest.bitmaps, strict=True):
                np.bitwise_or(bm[: got.size], got, out=bm[: got.size])
            return
        for b, bm in zip(blocks, bitmaps, strict=True):
            if ps == PAGE_SIZE:
                got = c.get_dirty_bitmap(b.gpa, b.length)
            else:  # Type1 reports at the IOMMU page size only
                raw = c.get_dirty_bitmap(b.gpa, b.length)
                got = bitmap.convert(raw, -(-b.length // PAGE_SIZE), PAGE_SIZE, ps)
            n = min(bm.size, got.size)
            np.bitwise_or(bm[:n], got[:n], out=bm[:n])

    def _on_unmap(self, iova: int, length: int, bits: U64) -> None:
        """A container's unmap sink: keep the dirty runs of [iova, iova+size) per block."""
        if not self.started:
            return
        runs = bitmap.to_ranges(bits, -(-length // PAGE_SIZE)) * np.uint64(PAGE_SIZE)
        if not len(runs):
            return
        runs[:, 0] += np.uint64(iova)
        for b in self._blocks():
            if b.gpa < iova + length and iova < b.end:
                self._unmapped.append(_Unmapped(b, runs))

    def _all(self, reasons: list[str], why: str) -> None:
        for i in range(len(reasons)):
            reasons[i] = reasons[i] or why

    def _nbits(self, b: RamBlock) -> int:
        return -(-b.length // self.page_size)

    def _span(self, b: RamBlock) -> int:
        """The block's size rounded up to whole tracker pages (the kernel wants aligned
        lengths)."""
        return self._nbits(b) * self.page_size


def bitmap_all(bm: U64, nbits: int) -> None:
    """Set the first `nbits` bits of `bm`."""
    full, rest = divmod(nbits, 64)
    bm[:full] = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    if rest:
        bm[full] = np.uint64((1 << rest) - 1)


def _zeros(length: int, page_size: int) -> U64:
    return np.zeros(max(bitmap.words_for_length(length, page_size), 1), np.uint64)


def _or_ranges(bm: U64, block: RamBlock, gpa_ranges: U64, page_size: int) -> None:
    """OR the pages of `block` that intersect the guest byte ranges into `bm`."""
    start = gpa_ranges[:, 0].astype(np.int64) - block.gpa
    end = start + gpa_ranges[:, 1].astype(np.int64)
    start = np.clip(start, 0, block.length)
    end = np.clip(end, 0, block.length)
    keep = end > start
    if not keep.any():
        return
    first = start[keep] // page_size
    last = (end[keep] - 1) // page_size
    pages = np.stack([first, last - first + 1], axis=1).astype(np.uint64)
    nbits = -(-block.length // page_size)
    add = bitmap.from_ranges(pages, nbits)
    bitmap.or_merge(bm[: add.size], add)


def _describe(c: Container) -> str:
    if isinstance(c, IommufdContainer):
        return f"container (IOAS {c.ioas_id})"
    return repr(c)
