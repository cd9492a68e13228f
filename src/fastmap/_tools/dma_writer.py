"""Devices that keep writing guest memory at a chosen rate, for migration demos and tests.

Both writers pick pages uniformly at random over the given guest ranges and fill each with
fresh random bytes, `pages_per_second` pages a second, until `stop()` (which returns only
once nothing more will be written):

* `SimDeviceWriter`: a simulated PCI device (e.g. the edu) on the simulated kernel. The
  writes are real DMA from a C++ thread of the simulator, through the device's IOMMU
  domain: they set the IOPTE dirty bits exactly as the edu DMA engine's writes do, and they
  fault if the range is not mapped (or bus mastering is off).
* `MockDeviceWriter`: the iommufd selftest mock device (`fastmap._tools.mock_device`), on the real
  kernel or the simulated one. The mock has no DMA, so a Python thread plays the device:
  it writes the bytes into guest RAM from the CPU, then marks the pages dirty with
  IOMMU_TEST_OP_DIRTY (one call per batch). What the tracker sees is the same as for a
  real device: the data in memory and the dirty bits set, data first.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from fastmap._tools.mock_device import MockDevice
from fastmap.kernel import Kernel
from fastmap.ram import PAGE_SIZE

__all__ = ["DeviceWriter", "MockDeviceWriter", "SimDeviceWriter", "WriterStats"]


@dataclass(frozen=True)
class WriterStats:
    #: Page writes that reached memory.
    pages: int
    #: Writes the IOMMU (or the device) refused.
    faults: int
    #: Bytes written by the successful writes.
    bytes: int


class DeviceWriter(Protocol):
    """A device writing random pages at a rate (both writers below)."""

    pages_per_second: float

    def start(self) -> None: ...
    def stop(self) -> WriterStats: ...
    @property
    def stats(self) -> WriterStats: ...


def _check(ranges: Sequence[tuple[int, int]], rate: float) -> list[tuple[int, int]]:
    if not rate > 0:
        raise ValueError(f"pages_per_second must be positive, not {rate}")
    out = [(int(a), int(n)) for a, n in ranges]
    if not out:
        raise ValueError("no guest ranges to write")
    for a, n in out:
        if n <= 0 or a % PAGE_SIZE or n % PAGE_SIZE:
            raise ValueError(f"range [{a:#x}, +{n:#x}) is empty or not page aligned")
    return out


class SimDeviceWriter:
    """DMA writes by a simulated PCI device, from a thread of the simulator."""

    def __init__(
        self,
        kernel: Kernel,
        bdf: str,
        ranges: Sequence[tuple[int, int]],
        pages_per_second: float,
        *,
        write_size: int | None = None,
        seed: int = 0,
    ) -> None:
        """`bdf`: the device on the simulated machine of `kernel` (bus mastering must be on
        for its writes to leave it); `ranges`: [(guest address = IOVA, length)];
        `write_size`: bytes per write (default the whole page)."""
        machine = getattr(kernel, "machine", None)
        if machine is None:
            raise ValueError("SimDeviceWriter needs the simulated kernel (its machine)")
        self.pages_per_second = float(pages_per_second)
        self._writer = machine.dma_writer(
            bdf, _check(ranges, self.pages_per_second), PAGE_SIZE, write_size, seed
        )

    def start(self) -> None:
        self._writer.start(self.pages_per_second)

    def set_rate(self, pages_per_second: float) -> None:
        self.pages_per_second = float(pages_per_second)
        self._writer.set_rate(self.pages_per_second)

    def stop(self) -> WriterStats:
        return WriterStats(**self._writer.stop())

    @property
    def stats(self) -> WriterStats:
        return WriterStats(**self._writer.stats)

    @property
    def running(self) -> bool:
        return bool(self._writer.running)


class MockDeviceWriter:
    """Emulated DMA writes of a selftest mock device, from a Python thread (see the module
    doc): the CPU writes the bytes, then IOMMU_TEST_OP_DIRTY marks the pages."""

    _POOL = 1 << 20  # bytes of random data the pages are cut from

    #: How often the thread wakes to write the pages that are due.
    TICK = 0.002
    #: Pages written between two looks at the clock.
    MAX_BATCH = 256
    #: A thread starved of CPU for longer than this does not burst to catch up: a device
    #: never writes faster than its rate, it just wrote less while starved (see `stats`).
    MAX_BACKLOG = 0.05

    def __init__(
        self,
        device: MockDevice,
        ranges: Sequence[tuple[int, int]],
        pages_per_second: float,
        *,
        seed: int = 0,
    ) -> None:
        self.device = device
        self.pages_per_second = float(pages_per_second)
        self._ranges = _check(ranges, self.pages_per_second)
        self._first = np.cumsum([0] + [n // PAGE_SIZE for _, n in self._ranges])
        self._rng = np.random.default_rng(seed)
        self._pool = self._rng.integers(0, 256, self._POOL, np.uint8)
        self._serial = seed << 40
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pages = self._faults = 0
        self._error: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the writer is already running")
        if self.device.space is None:
            raise RuntimeError(f"{self.device.name} is not attached")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mock-dma-writer", daemon=True)
        self._thread.start()

    def stop(self) -> WriterStats:
        """Stop and join; re-raises what made the thread fail, if anything did."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join()
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return self.stats

    @property
    def stats(self) -> WriterStats:
        return WriterStats(self._pages, self._faults, self._pages * PAGE_SIZE)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _gpas(self, count: int) -> NDArray[np.int64]:
        pages = self._rng.integers(0, int(self._first[-1]), count)
        which = np.searchsorted(self._first, pages, side="right") - 1
        starts = np.array([a for a, _ in self._ranges], np.int64)
        gpas: NDArray[np.int64] = starts[which] + (pages - self._first[which]) * PAGE_SIZE
        return gpas

    def _run(self) -> None:
        space = self.device.space
        assert space is not None
        t0 = time.perf_counter()
        done = 0
        try:
            while not self._stop.is_set():
                rate = self.pages_per_second
                now = time.perf_counter()
                due = int(rate * (now - t0)) - done
                if due <= 0:
                    self._stop.wait(self.TICK)
                    continue
                if due > max(self.MAX_BATCH, rate * self.MAX_BACKLOG):
                    t0, done, due = now - self.MAX_BATCH / rate, 0, self.MAX_BATCH
                gpas = self._gpas(min(due, self.MAX_BATCH))
                # A page of the random pool at a random offset, stamped with a serial number:
                # unique contents for the price of one copy (fresh random bytes per page
                # cost too much in a TCG guest).
                offsets = self._rng.integers(0, self._POOL - PAGE_SIZE, len(gpas)) & ~7
                for gpa, off in zip(gpas.tolist(), offsets.tolist(), strict=True):
                    block = space.find(gpa, PAGE_SIZE)
                    dst = block.va + (gpa - block.gpa)
                    ctypes.memmove(dst, self._pool.ctypes.data + off, PAGE_SIZE)
                    self._serial += 1
                    ctypes.c_uint64.from_address(dst).value = self._serial
                if self.device.tracking:
                    self.device.mark_dirty(gpas.astype(np.uint64))
                self._pages += len(gpas)
                done += len(gpas)
        except BaseException as e:  # reported by stop()
            self._error = e
