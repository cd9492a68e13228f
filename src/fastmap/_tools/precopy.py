"""Live-migration pre-copy of guest RAM, driven by IOMMU dirty tracking, and its demo.

`Precopy` moves the RAM of an `AddressSpace` to destination buffers (numpy arrays standing
in for the destination host) while devices keep writing it:

1. round 0 sends every page;
2. each further round syncs the `DirtyTracker` (timed) and resends the pages written since
   the previous sync, until what remains is at most `threshold_pages` (or `max_rounds`);
3. stop-and-copy: the devices are stopped (`writer.stop()`), a final sync collects the
   last writes, and those pages plus the remainder of the last round are sent;
4. the destination is compared with the source byte for byte.

A link of `bandwidth` bytes/s is emulated by sleeping after each send, so that the rounds
take the time a real transfer would; that is what lets the devices dirty pages during a
round, and the remainder shrink by `rate * page / bandwidth` a round.

`run_demo` (the `fastmap migrate-demo` command, and examples/precopy.py) sets it all up:
guest RAM, a device with a dirty-tracking HWPT attached through the lifecycle, and a writer
(see fastmap._tools.dma_writer):

* `--kernel sim` (default) `--device edu`: a simulated edu device behind a VT-d IOMMU with
  dirty tracking; its writes are real DMA through the simulated IOMMU;
* `--device mock` (the only kind on the real kernel, `--kernel real` in the test VM): the
  iommufd selftest mock device. The real kernel's mock cannot DMA, so its "device" is a
  thread that writes the bytes from the CPU and then marks the pages dirty with
  IOMMU_TEST_OP_DIRTY: the dirty bits are the kernel's, the writes are emulated.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fastmap import bitmap
from fastmap._tools.dma_writer import DeviceWriter
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.migration import BlockDirty, DirtyTracker, SyncResult
from fastmap.ram import PAGE_SIZE, RamBlock

__all__ = ["Precopy", "PrecopyReport", "Round", "run_demo"]

MiB = 1 << 20


@dataclass(frozen=True)
class Round:
    """One round: what the sync found and what was sent."""

    index: int
    dirty_pages: int
    harvest_seconds: float  # 0 for round 0 (no sync)
    bytes_sent: int
    send_seconds: float
    device_pages: int  # pages the device had written when the round ended
    all_dirty: bool = False  # the sync reported everything (a device it cannot track)


@dataclass
class PrecopyReport:
    rounds: list[Round] = field(default_factory=list)
    converged: bool = False
    #: Stop-and-copy: pages sent, the final sync's time, and the downtime (writer stopped
    #: to destination complete).
    final_pages: int = 0
    final_harvest_seconds: float = 0.0
    downtime_seconds: float = 0.0
    #: Pages that differed just before the final copy, and whether all were being sent.
    stale_pages: int = 0
    stale_all_covered: bool = True
    #: Device writes in total, and their faults.
    device_pages: int = 0
    device_faults: int = 0
    #: The verdict: (block name, pages that differ) for every block that differs.
    mismatches: list[tuple[str, int]] = field(default_factory=list)
    total_bytes_sent: int = 0

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.stale_all_covered


def _view(block: RamBlock) -> NDArray[np.uint8]:
    """The block's memory as a writable uint8 array (no copy)."""
    buf = (ctypes.c_uint8 * block.length).from_address(block.va)
    return np.ctypeslib.as_array(buf)


class Precopy:
    """Pre-copy of `space`'s RAM into destination arrays, one per block (`dest`)."""

    def __init__(
        self,
        space: AddressSpace,
        tracker: DirtyTracker,
        *,
        bandwidth: float | None = None,
        threshold_pages: int = 64,
        max_rounds: int = 30,
    ) -> None:
        if tracker.page_size != PAGE_SIZE:
            raise ValueError("pre-copy sends host pages: use a tracker at PAGE_SIZE")
        self.space = space
        self.tracker = tracker
        self.bandwidth = bandwidth
        self.threshold_pages = threshold_pages
        self.max_rounds = max_rounds
        self.blocks = space.blocks
        self._src = {id(b): _view(b).reshape(-1, PAGE_SIZE) for b in self.blocks}
        #: The destination host's copy of each block (by block name).
        # Gather buffer for sends, as large as the largest block and faulted in now, so no
        # round pays for fresh memory.
        most = max((b.length // PAGE_SIZE for b in self.blocks), default=0)
        self._stage = np.ones((most, PAGE_SIZE), np.uint8)
        self.dest = {
            b.name: np.zeros((b.length // PAGE_SIZE, PAGE_SIZE), np.uint8) for b in self.blocks
        }

    # --- sending ---------------------------------------------------------------------------
    def _pace(self, nbytes: int, t0: float) -> None:
        """Sleep until `nbytes` would have crossed the emulated link since t0."""
        if self.bandwidth:
            left = nbytes / self.bandwidth - (time.perf_counter() - t0)
            if left > 0:
                time.sleep(left)

    def send_all(self) -> tuple[int, float]:
        """Copy every page; returns (bytes, seconds)."""
        t0 = time.perf_counter()
        n = 0
        for b in self.blocks:
            np.copyto(self.dest[b.name], self._src[id(b)])
            n += b.length
        self._pace(n, t0)
        return n, time.perf_counter() - t0

    def send(self, dirty: Sequence[BlockDirty]) -> tuple[int, float]:
        """Copy the pages `dirty` marks; returns (bytes, seconds)."""
        t0 = time.perf_counter()
        n = 0
        for d in dirty:
            pages = _pages(d.bitmap, d.nbits)
            if not len(pages):
                continue
            # Gather into a reused buffer, then scatter: no fresh temporary (and its page
            # faults) for every round.
            staged = self._staging(len(pages))
            np.take(self._src[id(d.block)], pages, axis=0, out=staged)
            self.dest[d.block.name][pages] = staged
            n += len(pages) * PAGE_SIZE
        self._pace(n, t0)
        return n, time.perf_counter() - t0

    def _staging(self, pages: int) -> NDArray[np.uint8]:
        if self._stage.shape[0] < pages:
            self._stage = np.ones((pages, PAGE_SIZE), np.uint8)
        return self._stage[:pages]

    # --- checking ---------------------------------------------------------------------------
    def differing_pages(self) -> dict[str, NDArray[np.intp]]:
        """Per block, the pages where destination and source differ."""
        out = {}
        for b in self.blocks:
            src, dst = self._src[id(b)], self.dest[b.name]
            out[b.name] = np.flatnonzero((src != dst).any(axis=1))
        return out

    # --- the whole migration ------------------------------------------------------------------
    def run(
        self, writer: DeviceWriter, on_round: Callable[[Round], None] | None = None
    ) -> PrecopyReport:
        """Start tracking and the writer, iterate, stop-and-copy, verify. The tracker is
        stopped at the end (and the writer, also on failure)."""
        report = PrecopyReport()
        emit = on_round or (lambda r: None)
        self.tracker.start()
        try:
            writer.start()
            try:
                _first_write(writer)
                remainder = self._iterate(writer, report, emit)
            finally:
                t_stop = time.perf_counter()
                stats = writer.stop()
            final = self.tracker.sync()
            report.final_harvest_seconds = final.seconds
            todo = _merge(remainder, final) if remainder is not None else list(final.blocks)
            paused = time.perf_counter()
            # Not part of the downtime: every page that differs now must be in `todo`.
            stale = self.differing_pages()
            report.stale_pages = sum(len(v) for v in stale.values())
            report.stale_all_covered = all(
                np.isin(stale[d.block.name], _pages(d.bitmap, d.nbits)).all() for d in todo
            )
            sent, send_seconds = self.send(todo)
            report.downtime_seconds = paused - t_stop + send_seconds
            report.final_pages = sent // PAGE_SIZE
            report.total_bytes_sent += sent
        finally:
            self.tracker.stop()
        report.device_pages, report.device_faults = stats.pages, stats.faults
        report.mismatches = [(k, len(v)) for k, v in self.differing_pages().items() if len(v)]
        return report

    def _iterate(
        self, writer: DeviceWriter, report: PrecopyReport, emit: Callable[[Round], None]
    ) -> list[BlockDirty] | None:
        """Rounds 0.. until the remainder is small; returns the last sync's unsent pages
        (None if the rounds ran out after sending everything found)."""
        sent, secs = self.send_all()
        r = Round(
            0, sum(b.length for b in self.blocks) // PAGE_SIZE, 0.0, sent, secs, writer.stats.pages
        )
        report.rounds.append(r)
        report.total_bytes_sent += sent
        emit(r)
        for i in range(1, self.max_rounds + 1):
            res = self.tracker.sync()
            all_dirty = any(d.all_dirty for d in res.blocks)
            if res.dirty_pages <= self.threshold_pages and not all_dirty:
                report.converged = True
                report.rounds.append(
                    Round(i, res.dirty_pages, res.seconds, 0, 0.0, writer.stats.pages)
                )
                emit(report.rounds[-1])
                return list(res.blocks)
            sent, secs = self.send(res.blocks)
            r = Round(i, res.dirty_pages, res.seconds, sent, secs, writer.stats.pages, all_dirty)
            report.rounds.append(r)
            report.total_bytes_sent += sent
            emit(r)
        return None


def _first_write(writer: DeviceWriter, timeout: float = 1.0) -> None:
    """Wait (a little) until the device has written once: a running device is what is
    migrated, and a thread of a busy or emulated machine may take a while to get going."""
    end = time.perf_counter() + timeout
    while writer.stats.pages + writer.stats.faults == 0 and time.perf_counter() < end:
        time.sleep(0.001)


def _pages(bm: NDArray[np.uint64], nbits: int) -> NDArray[np.intp]:
    """Indices of the set bits among the first nbits."""
    bits = np.unpackbits(bm.view(np.uint8), bitorder="little")[:nbits]
    return np.flatnonzero(bits)


def _merge(a: list[BlockDirty], b: SyncResult) -> list[BlockDirty]:
    """Per block, the union of two syncs' pages."""
    prev = {id(d.block): d for d in a}
    out = []
    for d in b.blocks:
        p = prev.get(id(d.block))
        if p is None:
            out.append(d)
            continue
        bm = d.bitmap.copy()
        bitmap.or_merge(bm, p.bitmap)
        out.append(BlockDirty(d.block, d.page_size, bm, d.nbits, d.all_dirty, d.reason))
    return out


# --- the demo -------------------------------------------------------------------------------
@dataclass
class DemoOptions:
    kernel: str | None = "sim"
    device: str = "auto"  # edu | mock | auto (edu on the sim, mock on the real kernel)
    ram_mib: Sequence[int] = (48, 16)
    #: Device page writes per second; None: 50,000 for the edu (a C++ thread), 5,000 for
    #: the mock device (a Python thread, which competes with the copy loop for the GIL).
    rate: float | None = None
    bandwidth_mib: float = 512.0  # emulated link, MiB/s (0: unlimited)
    threshold: int = 64  # pages
    max_rounds: int = 30
    huge_iopte: bool = False  # let the IOMMU use 2 MiB IOPTEs (coarse dirty tracking)
    seed: int = 1

    @classmethod
    def from_args(cls, args: Any, kernel: str | None) -> DemoOptions:
        """From the options `add_migrate_demo_arguments` (fastmap.cli) defines."""
        return cls(
            kernel=kernel,
            device=args.device,
            ram_mib=args.ram_mib,
            rate=args.rate,
            bandwidth_mib=args.bandwidth,
            threshold=args.threshold,
            max_rounds=args.max_rounds,
            huge_iopte=args.huge_iopte,
            seed=args.seed,
        )


#: Guest RAM starts here: inside the mock IOMMU's aperture [16 MiB, 2 GiB) and below the
#: edu's 28-bit DMA mask.
RAM_BASE = 0x200_0000


def run_demo(opts: DemoOptions, out: Callable[[str], None] = print) -> int:
    """The pre-copy demo; 0 when the destination matches the source byte for byte."""
    from fastmap._tools.dma_writer import MockDeviceWriter, SimDeviceWriter
    from fastmap._tools.mock_device import MockDevice
    from fastmap.lifecycle.backend import IOMMUFDBackend
    from fastmap.lifecycle.device import VFIODevice
    from fastmap.lifecycle.vfio_iommufd import IommufdContainer
    from fastmap.seam import open_kernel

    kernel = open_kernel(opts.kernel)  # type: ignore[arg-type]
    machine = getattr(kernel, "machine", None)
    kind = opts.device
    if kind == "auto":
        kind = "edu" if machine is not None else "mock"
    if kind == "edu" and machine is None:
        out(
            "the edu writer needs the simulated kernel (its DMA engine is simulated); "
            "use --device mock on the real kernel"
        )
        return 2
    if sum(opts.ram_mib) * MiB + RAM_BASE > 0x1000_0000:
        out("guest RAM must end below 256 MiB (edu's DMA mask)")
        return 2

    with ExitStack() as stack:
        space = stack.enter_context(AddressSpace("migrating-guest"))
        be = stack.enter_context(IOMMUFDBackend(kernel=kernel))
        if kind == "edu":
            assert machine is not None
            bdf = machine.add_pci_device(iommu="vtd", dirty=True)["bdf"]
            dev = stack.enter_context(VFIODevice(bdf, kernel=kernel).attach(space, be))
            dev.enable_dma()  # bus mastering: the writer's DMA leaves the device
            what = (
                f"simulated edu {bdf} behind VT-d with dirty tracking (real DMA through the IOMMU)"
            )
        else:
            dev = stack.enter_context(MockDevice(kernel=kernel).attach(space, be))
            what = (
                "iommufd selftest mock device (CPU writes + IOMMU_TEST_OP_DIRTY marks: "
                "the dirty bits are the kernel's, the DMA is emulated)"
            )
        container = dev.container
        assert container is not None and dev.hwpt is not None
        if not opts.huge_iopte and isinstance(container, IommufdContainer):
            # No large IOPTEs: dirty bits per 4 KiB page. Allowed while nothing is mapped.
            container.ioas.huge_pages = False
        gpa = RAM_BASE
        for i, mib in enumerate(opts.ram_mib):
            space.add_ram(mib * MiB, gpa, name=f"ram{i}")
            gpa += mib * MiB
        ranges = [(b.gpa, b.length) for b in space.blocks]
        rate = opts.rate or (50_000.0 if kind == "edu" else 5_000.0)
        writer: DeviceWriter
        if kind == "edu":
            writer = SimDeviceWriter(kernel, dev.name, ranges, rate, seed=opts.seed)
        else:
            assert isinstance(dev, MockDevice)
            writer = MockDeviceWriter(dev, ranges, rate, seed=opts.seed)
        rng = np.random.default_rng(opts.seed)
        for b in space.blocks:
            _view(b)[:] = rng.integers(0, 256, b.length, np.uint8)

        total = sum(b.length for b in space.blocks)
        out(f"kernel: {kernel.name}; device: {what}")
        out(
            f"container: {container!r}, HWPT {dev.hwpt.id} dirty tracking "
            f"{dev.hwpt.dirty_tracking}, IOPTEs {'huge allowed' if opts.huge_iopte else '4 KiB'}"
        )
        out(
            "guest RAM: "
            + ", ".join(f"{b.name} [{b.gpa:#x}, +{b.length // MiB} MiB)" for b in space.blocks)
            + f" = {total // PAGE_SIZE} pages of {PAGE_SIZE} bytes"
        )
        bw = opts.bandwidth_mib * MiB if opts.bandwidth_mib > 0 else None
        out(
            f"device writes {rate:,.0f} random pages/s; link "
            + (f"{opts.bandwidth_mib:g} MiB/s" if bw else "unlimited")
            + f"; iterate until <= {opts.threshold} pages remain (at most {opts.max_rounds} rounds)"
        )
        out("")
        out(
            f"{'round':>5} {'dirty pages':>12} {'harvest ms':>11} {'sent MiB':>9} "
            f"{'send ms':>8} {'device writes':>14}"
        )

        def show(r: Round) -> None:
            harvest = "-" if r.index == 0 else f"{r.harvest_seconds * 1e3:.3f}"
            note = "  (all dirty: untracked device)" if r.all_dirty else ""
            note = note or (
                "  -> below threshold: stop-and-copy" if r.bytes_sent == 0 and r.index else ""
            )
            out(
                f"{r.index:>5} {r.dirty_pages:>12} {harvest:>11} {r.bytes_sent / MiB:>9.2f} "
                f"{r.send_seconds * 1e3:>8.1f} {r.device_pages:>14}{note}"
            )

        tracker = DirtyTracker(space)
        pre = Precopy(
            space, tracker, bandwidth=bw, threshold_pages=opts.threshold, max_rounds=opts.max_rounds
        )
        report = pre.run(writer, show)

    out("")
    if not report.converged:
        out(f"did not converge in {opts.max_rounds} rounds: stop-and-copy sends the rest")
    out(
        f"stop-and-copy: device stopped after {report.device_pages} page writes "
        f"({report.device_faults} faults); final harvest "
        f"{report.final_harvest_seconds * 1e3:.3f} ms; sent {report.final_pages} pages; "
        f"downtime {report.downtime_seconds * 1e3:.1f} ms"
    )
    out(
        f"check: {report.stale_pages} pages differed before the final copy, "
        + ("all of them reported dirty" if report.stale_all_covered else "SOME NOT REPORTED DIRTY")
    )
    out(
        f"sent {report.total_bytes_sent / MiB:.2f} MiB in total for {total / MiB:.0f} MiB of RAM "
        f"in {len(report.rounds)} rounds + stop-and-copy"
    )
    if report.mismatches:
        out(
            "verify: destination DIFFERS from source: "
            + ", ".join(f"{n}: {k} pages" for n, k in report.mismatches)
        )
    else:
        out(f"verify: destination == source, {total} bytes in {len(opts.ram_mib)} blocks")
    out("RESULT migrate-demo " + ("OK" if report.ok else "FAIL"))
    return 0 if report.ok else 1
