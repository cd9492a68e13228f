#!/usr/bin/env python3
"""The live-migration pre-copy loop, written out: IOMMU dirty tracking says which guest
pages a device wrote since the last look, and only those are sent again.

    python examples/migration_loop.py                 # the simulated kernel (an edu device)
    python examples/migration_loop.py --rate 20000 --threshold 32

On the simulator an edu device behind a VT-d IOMMU with dirty tracking keeps DMA-writing
random guest pages (from a thread of the simulator, through the IOMMU, so the dirty bits are
the IOMMU's own). The loop:

1. start dirty tracking (`DirtyTracker.start`: every HWPT of the address space), then copy
   all of guest RAM to the "destination" (here numpy arrays);
2. each round, `sync()` harvests and clears the dirty bits: per RAM block, a bitmap of the
   pages written since the previous sync. Copy those pages again;
3. when a round finds few enough pages (or the rounds run out), stop the device, sync once
   more and copy what is left: the destination now equals the source, checked byte for byte.

`fastmap migrate-demo` is the same with timing, an emulated link and the real kernel's mock
device; this file is the loop alone. Exit status 0 when the copy is exact.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from fastmap import AddressSpace, DirtyTracker, IOMMUFDBackend, VFIODevice, bitmap
from fastmap.lifecycle.vfio_iommufd import IommufdContainer
from fastmap.migration import BlockDirty
from fastmap.ram import PAGE_SIZE, RamBlock
from fastmap.sim import SimKernel

RAM_GPA = 0x200_0000  # below edu's 28-bit DMA mask
MiB = 1 << 20


def pages_of(block: RamBlock) -> NDArray[np.uint8]:
    """A block's memory as (pages, PAGE_SIZE) bytes, no copy."""
    raw = (ctypes.c_uint8 * block.length).from_address(block.va)
    return np.ctypeslib.as_array(raw).reshape(-1, PAGE_SIZE)


def dirty_page_numbers(d: BlockDirty) -> NDArray[np.intp]:
    """The pages a sync reported for one block: its bitmap's runs, as page indices."""
    runs = bitmap.to_ranges(d.bitmap, d.nbits)  # [first_page, count] per run of dirty pages
    return np.concatenate(
        [np.arange(first, first + count, dtype=np.intp) for first, count in runs.tolist()]
        or [np.empty(0, np.intp)]
    )


def send(
    dest: NDArray[np.uint8], src: NDArray[np.uint8], pages: NDArray[np.intp], mib_s: float
) -> None:
    """Copy `pages` to the destination, taking as long as the link would: that time is what
    lets the device dirty more pages meanwhile, as in a real migration."""
    t0 = time.perf_counter()
    dest[pages] = src[pages]
    time.sleep(max(0.0, len(pages) * PAGE_SIZE / (mib_s * MiB) - (time.perf_counter() - t0)))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ram-mib", type=int, default=16, help="guest RAM in MiB")
    p.add_argument("--rate", type=float, default=10_000, help="device page writes per second")
    p.add_argument(
        "--bandwidth", type=float, default=256, help="the emulated link to the destination, MiB/s"
    )
    p.add_argument("--threshold", type=int, default=64, help="stop iterating below this")
    p.add_argument("--max-rounds", type=int, default=20)
    args = p.parse_args(argv)

    kernel = SimKernel()  # a machine of our own: an edu whose IOMMU tracks dirty pages
    bdf = kernel.machine.add_pci_device(iommu="vtd", dirty=True)["bdf"]
    with IOMMUFDBackend(kernel=kernel) as be, AddressSpace("guest") as space:
        dev = VFIODevice(bdf, kernel=kernel)
        with dev.attach(space, be):  # a HWPT allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING
            dev.enable_dma()  # bus mastering on: the device's writes reach memory
            container = dev.container
            assert isinstance(container, IommufdContainer)
            # Dirty bits live in IOPTEs: with 2 MiB IOPTEs one write would dirty 512 pages.
            container.ioas.huge_pages = False
            ram = space.add_ram(args.ram_mib * MiB, RAM_GPA, name="ram0")
            src = pages_of(ram)
            src[:] = np.random.default_rng(1).integers(0, 256, src.shape, np.uint8)
            dest = np.zeros_like(src)

            writer = kernel.machine.dma_writer(bdf, [(ram.gpa, ram.length)], PAGE_SIZE, None, 2)
            with DirtyTracker(space) as tracker:  # start() now, stop() at the end
                writer.start(args.rate)
                deadline = time.monotonic() + 5
                while writer.stats["pages"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.001)  # migrate a device that is running
                send(dest, src, np.arange(len(src)), args.bandwidth)  # round 0: everything
                print(f"round 0: sent all {len(src)} pages")
                for round_no in range(1, args.max_rounds + 1):
                    result = tracker.sync()  # harvest + clear, every HWPT, every block
                    print(
                        f"round {round_no}: {result.dirty_pages} pages dirty "
                        f"(harvest {result.seconds * 1e3:.2f} ms)"
                    )
                    if result.dirty_pages <= args.threshold:
                        break
                    for d in result.blocks:
                        send(dest, src, dirty_page_numbers(d), args.bandwidth)
                # Stop-and-copy: the device stops, one last sync has every page since.
                stats = writer.stop()
                last = tracker.sync()
                leftover = np.union1d(
                    np.concatenate([dirty_page_numbers(d) for d in result.blocks]),
                    np.concatenate([dirty_page_numbers(d) for d in last.blocks]),
                )
                send(dest, src, leftover, args.bandwidth)
                print(
                    f"stop-and-copy: {len(leftover)} pages; the device wrote "
                    f"{stats['pages']} pages in all"
                )
            ok = bool(np.array_equal(dest, src))
    print("RESULT migration_loop", "OK" if ok else "FAIL: the destination differs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
