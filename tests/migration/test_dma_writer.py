"""The background DMA writers: the simulated device's (C++ thread, DMA through the IOMMU)
and the mock device's (emulated writes + selftest dirty marks). No timing is asserted: the
tests wait for progress, then compare memory with what the dirty bitmaps say."""

from __future__ import annotations

import ctypes
import errno
import time
from collections.abc import Iterator

import numpy as np
import pytest
from numpy.typing import NDArray

from fastmap._tools.dma_writer import DeviceWriter, MockDeviceWriter, SimDeviceWriter
from fastmap._tools.mock_device import MockDevice
from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice
from fastmap.migration import DirtyTracker
from fastmap.ram import RamBlock
from tests.facilities import only_on_sim
from tests.migration.conftest import GPA, PAGE, add_sim_device, dirty_edu, set_bits, sim_only

SIZE = 1 << 20
PAGES = SIZE // PAGE


def pages_of(block: RamBlock) -> NDArray[np.uint8]:
    buf = (ctypes.c_uint8 * block.length).from_address(block.va)
    return np.ctypeslib.as_array(buf).reshape(-1, PAGE).copy()


def changed(before: NDArray[np.uint8], after: NDArray[np.uint8]) -> set[int]:
    return {int(i) for i in np.flatnonzero((before != after).any(axis=1))}


def wait_for(writer: DeviceWriter, pages: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while writer.stats.pages + writer.stats.faults < pages:
        assert time.monotonic() < end, f"the writer made no progress: {writer.stats}"
        time.sleep(0.005)


@pytest.fixture
def edu_guest(kernel: Kernel) -> Iterator[tuple[AddressSpace, VFIODevice]]:
    with dirty_edu(kernel) as (space, dev):
        space.add_ram(SIZE, GPA)
        dev.enable_dma()
        yield space, dev


@only_on_sim
def test_sim_writer_dma_sets_dirty_bits(
    edu_guest: tuple[AddressSpace, VFIODevice], kernel: Kernel
) -> None:
    space, dev = edu_guest
    block = space.blocks[0]
    hot = (GPA + 64 * PAGE, 32 * PAGE)  # the device writes only these pages
    writer = SimDeviceWriter(kernel, dev.name, [hot], 200_000, seed=3)
    before = pages_of(block)
    with DirtyTracker(space) as t:
        writer.start()
        wait_for(writer, 200)
        stats = writer.stop()
        assert stats.pages >= 200 and stats.faults == 0 and stats.bytes == stats.pages * PAGE
        r = t.sync()
    written = changed(before, pages_of(block))
    # Every page whose bytes changed is reported (and only the hot pages were written).
    assert written and written <= set(range(64, 96))
    assert set_bits(r.blocks[0].bitmap, PAGES) == written
    assert writer.stats == stats  # nothing after stop


@only_on_sim
def test_sim_writer_partial_writes(
    edu_guest: tuple[AddressSpace, VFIODevice], kernel: Kernel
) -> None:
    space, dev = edu_guest
    block = space.blocks[0]
    writer = SimDeviceWriter(kernel, dev.name, [(GPA, SIZE)], 100_000, write_size=64, seed=4)
    before = pages_of(block)
    with DirtyTracker(space) as t:
        writer.start()
        wait_for(writer, 50)
        stats = writer.stop()
        r = t.sync()
    after = pages_of(block)
    assert stats.bytes == 64 * stats.pages
    assert 0 < (before != after).sum() <= stats.bytes  # 64 bytes a write, not whole pages
    assert set_bits(r.blocks[0].bitmap, PAGES) >= changed(before, after)


@only_on_sim
def test_sim_writer_is_stopped_by_the_iommu(
    edu_guest: tuple[AddressSpace, VFIODevice], kernel: Kernel
) -> None:
    """Writes to an unmapped range fault in the IOMMU and change no memory."""
    space, dev = edu_guest
    c = dev.container
    assert c is not None
    block = space.blocks[0]
    before = pages_of(block)
    c.dma_unmap(GPA, SIZE)
    writer = SimDeviceWriter(kernel, dev.name, [(GPA, SIZE)], 100_000)
    writer.start()
    wait_for(writer, 20)
    stats = writer.stop()
    assert stats.pages == 0 and stats.faults >= 20
    assert changed(before, pages_of(block)) == set()
    c.dma_map(block.va, SIZE, GPA)


@only_on_sim
def test_sim_writer_needs_bus_mastering(kernel: Kernel) -> None:
    sim_only(kernel)
    with AddressSpace() as space, IOMMUFDBackend(kernel=kernel) as be:
        space.add_ram(SIZE, GPA)
        dev = VFIODevice(add_sim_device(kernel, iommu="vtd", dirty=True), kernel=kernel)
        with dev.attach(space, be):
            writer = SimDeviceWriter(kernel, dev.name, [(GPA, SIZE)], 100_000)
            writer.start()
            wait_for(writer, 10)
            assert writer.stop().pages == 0
            faults = kernel.machine.dma_faults(dev.name)  # type: ignore[attr-defined]
            assert faults and all(f["error"] == -errno.EIO for f in faults)


@only_on_sim
def test_sim_writer_arguments(edu_guest: tuple[AddressSpace, VFIODevice], kernel: Kernel) -> None:
    _, dev = edu_guest
    machine = kernel.machine  # type: ignore[attr-defined]
    for ranges in ([], [(GPA + 1, PAGE)], [(GPA, PAGE + 1)], [(GPA, 0)]):
        with pytest.raises(OSError) as e:
            machine.dma_writer(dev.name, ranges)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        machine.dma_writer(dev.name, [(GPA, PAGE)], write_size=PAGE + 8)
    with pytest.raises(OSError):
        machine.dma_writer("0000:00:1f.7", [(GPA, PAGE)])  # no such device
    w = machine.dma_writer(dev.name, [(GPA, 4 * PAGE), (GPA + SIZE // 2, PAGE)])
    assert w.total_pages == 5 and not w.running
    for rate in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(OSError):
            w.start(rate)
    w.start(10.0)
    assert w.running
    with pytest.raises(OSError) as e:
        w.start(10.0)
    assert e.value.errno == errno.EBUSY
    w.set_rate(20.0)
    w.stop()
    assert not w.running
    w.stop()  # idempotent
    with pytest.raises(ValueError):
        SimDeviceWriter(kernel, dev.name, [(GPA, SIZE)], 0)


def test_mock_writer(kernel: Kernel, mock_ok: None) -> None:
    """The mock device's emulated writes: memory changes and dirty marks agree."""
    with AddressSpace() as space, IOMMUFDBackend(kernel=kernel) as be:
        block = space.add_ram(SIZE, GPA)
        with MockDevice(kernel=kernel).attach(space, be) as dev:
            writer = MockDeviceWriter(dev, [(GPA, SIZE)], 20_000, seed=5)
            before = pages_of(block)
            with DirtyTracker(space) as t:
                writer.start()
                wait_for(writer, 100)
                stats = writer.stop()
                r = t.sync()
            written = changed(before, pages_of(block))
            assert stats.pages >= 100 and stats.faults == 0
            assert written and set_bits(r.blocks[0].bitmap, PAGES) == written
