"""Allocator throughput: alloc+free pairs per second with a given number of live ranges.

The workload is deterministic: ``live`` ranges of 1-8 pages are packed into a 1 TiB window,
then each step frees a random live range and first-fit allocates a new one of a random
length. It keeps the live count constant, and fragmentation builds up as it would in a
long-running process. :func:`measure_alloc` returns rows; it prints nothing, so a CLI or the
pytest benchmarks can present them.

Backends: fastmap through the batch API (``bulk_free`` + ``bulk_alloc`` of many
ranges per crossing) and through single calls, and PyPI's ``intervaltree`` doing the same
first-fit by walking its sorted boundary table (it has no gap index). Callers may add more,
e.g. the pure-Python reference model of the tests.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fastmap.allocator import IovaAllocator

__all__ = [
    "PAGE",
    "AllocBackend",
    "AllocBenchRow",
    "FastmapBatch",
    "FastmapSingle",
    "IntervalTreeFirstFit",
    "Workload",
    "default_backends",
    "measure_alloc",
]

PAGE = 4096
WINDOW_BASE = 1 << 32
WINDOW_SIZE = 1 << 40
BATCH = 4096

U64Array = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class AllocBenchRow:
    impl: str
    live: int
    pairs: int  # alloc+free pairs timed
    seconds: float  # wall-clock
    cpu_seconds: float  # this thread's CPU time: steadier than wall time on a shared host

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else float("inf")

    @property
    def pairs_per_cpu_second(self) -> float:
        return self.pairs / self.cpu_seconds if self.cpu_seconds > 0 else float("inf")


class Workload:
    """The prefill and the stream of (victim slot, new length) steps for one live count."""

    def __init__(self, live: int, seed: int = 0) -> None:
        if live < 1:
            raise ValueError("live must be >= 1")
        self.live = live
        self.seed = seed
        self.window = (WINDOW_BASE, WINDOW_BASE + WINDOW_SIZE - 1)
        rng = np.random.default_rng([seed, live])
        self.prefill_lengths: U64Array = rng.integers(1, 9, live).astype(np.uint64) * PAGE
        self.batch = min(BATCH, live)
        self._rng = np.random.default_rng([seed, live, 1])

    def steps(self, count: int) -> tuple[U64Array, U64Array]:
        """(slots, lengths) for `count` steps; each aligned run of `batch` slots is distinct,
        so a batch never frees the same range twice."""
        slots = np.empty(count, dtype=np.uint64)
        for i in range(0, count, self.batch):
            n = min(self.batch, count - i)
            slots[i : i + n] = self._rng.choice(self.live, n, replace=False)
        lengths = self._rng.integers(1, 9, count).astype(np.uint64) * PAGE
        return slots, lengths


class AllocBackend(Protocol):
    name: str

    def prefill(self, w: Workload) -> None:
        """Builds the live set (not timed)."""

    def run(self, slots: U64Array, lengths: U64Array) -> None:
        """Frees the range in each slot and first-fit allocates one of the new length (timed)."""


class FastmapBatch:
    """One bulk_free and one bulk_alloc crossing per batch of steps."""

    name = "fastmap (batch)"

    def prefill(self, w: Workload) -> None:
        self.a = IovaAllocator([w.window])
        self.live = self.a.bulk_alloc(w.prefill_lengths)
        self.batch = w.batch

    def run(self, slots: U64Array, lengths: U64Array) -> None:
        a, live, b = self.a, self.live, self.batch
        for i in range(0, slots.size, b):
            s = slots[i : i + b]
            a.bulk_free(live[s])
            live[s] = a.bulk_alloc(lengths[i : i + b])


class FastmapSingle:
    """One alloc and one free call per step."""

    name = "fastmap (single calls)"

    def prefill(self, w: Workload) -> None:
        self.a = IovaAllocator([w.window])
        self.live: list[int] = self.a.bulk_alloc(w.prefill_lengths).tolist()

    def run(self, slots: U64Array, lengths: U64Array) -> None:
        a, live = self.a, self.live
        for s, n in zip(slots.tolist(), lengths.tolist(), strict=True):
            a.free(live[s])
            live[s] = a.alloc(n)


class IntervalTreeFirstFit:
    """PyPI intervaltree holding the live ranges; first-fit walks its sorted boundary table,
    checking each segment long enough between two boundaries for being free."""

    name = "intervaltree"

    def prefill(self, w: Workload) -> None:
        from intervaltree import Interval, IntervalTree  # type: ignore[import-untyped]

        self.lo, self.hi = w.window[0], w.window[1] + 1  # half-open, as intervaltree uses
        ends = self.lo + np.cumsum(w.prefill_lengths.astype(np.int64))
        starts = ends - w.prefill_lengths.astype(np.int64)
        self.live: list[int] = starts.tolist()
        self.lens: list[int] = w.prefill_lengths.tolist()
        self.tree = IntervalTree(
            Interval(s, e) for s, e in zip(self.live, ends.tolist(), strict=True)
        )

    def _first_fit(self, length: int) -> int:
        tree = self.tree
        prev = self.lo
        for b in tree.boundary_table.irange(minimum=self.lo):
            # Between two boundaries the space is all free or all in one interval.
            if b - prev >= length and not tree.overlaps_point(prev):
                return prev
            prev = max(prev, b)
        if self.hi - prev >= length:
            return prev
        raise MemoryError(f"no room for {length:#x} bytes")

    def run(self, slots: U64Array, lengths: U64Array) -> None:
        tree, live, lens = self.tree, self.live, self.lens
        for s, n in zip(slots.tolist(), lengths.tolist(), strict=True):
            tree.removei(live[s], live[s] + lens[s])
            iova = self._first_fit(n)  # all lengths are whole pages: page-aligned already
            tree.addi(iova, iova + n)
            live[s], lens[s] = iova, n


class ReferenceModel:
    """fastmap.reference_allocator: the sorted-list model the tests check against (linear
    scans, no index)."""

    name = "python reference"

    def prefill(self, w: Workload) -> None:
        from fastmap._tools.reference_allocator import ReferenceAllocator

        self.ref = ReferenceAllocator([w.window])
        lengths = w.prefill_lengths.tolist()
        starts, pos = [], w.window[0]
        for n in lengths:
            starts.append(pos)
            pos += n
        # Bulk-built: a million single allocs would take hours on a linear model.
        self.ref.entries = sorted(
            self.ref.entries + [(s, s + n - 1, False) for s, n in zip(starts, lengths, strict=True)]
        )
        self.live = starts

    def run(self, slots: U64Array, lengths: U64Array) -> None:
        ref, live = self.ref, self.live
        for s, n in zip(slots.tolist(), lengths.tolist(), strict=True):
            ref.free(live[s])
            live[s] = ref.alloc(n, PAGE)


def default_backends() -> list[Callable[[], AllocBackend]]:
    """fastmap batch and single calls, and intervaltree when it is installed."""
    backends: list[Callable[[], AllocBackend]] = [FastmapBatch, FastmapSingle]
    if importlib.util.find_spec("intervaltree") is not None:
        backends.append(IntervalTreeFirstFit)
    return backends


def measure_alloc(
    live_counts: Iterable[int] = (1_000, 100_000, 1_000_000),
    backends: Sequence[Callable[[], AllocBackend]] | None = None,
    *,
    pairs: int = 200_000,
    max_seconds: float = 2.0,
    seed: int = 0,
    on_row: Callable[[AllocBenchRow], Any] | None = None,
) -> list[AllocBenchRow]:
    """Times alloc+free pairs for every backend at every live count.

    Each measurement runs up to `pairs` steps, in chunks, and stops early once it has used
    `max_seconds`, so slow backends report a rate from fewer steps. `on_row` sees each row as
    soon as it exists (for progress output).
    """
    rows = []
    for live in live_counts:
        for make in backends if backends is not None else default_backends():
            backend = make()
            w = Workload(live, seed)
            backend.prefill(w)
            # An untimed probe sizes the chunks: whole batches for fast backends, a few
            # steps at a time for slow ones so the time budget holds.
            t0 = time.perf_counter()
            backend.run(*w.steps(4))
            per_step = max((time.perf_counter() - t0) / 4, 1e-9)
            chunk = max(1, min(w.batch, int(max_seconds / per_step / 8)))
            done, spent, cpu = 0, 0.0, 0.0
            while done < pairs and spent < max_seconds:
                n = min(chunk, pairs - done)
                slots, lengths = w.steps(n)
                t0, c0 = time.perf_counter(), time.thread_time()
                backend.run(slots, lengths)
                spent += time.perf_counter() - t0
                cpu += time.thread_time() - c0
                done += n
            row = AllocBenchRow(backend.name, live, done, spent, cpu)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows
