#!/usr/bin/env python3
"""Live-migration pre-copy of guest RAM, driven by IOMMU dirty tracking (`fastmap
migrate-demo` as a script).

    python examples/precopy.py                       # simulated kernel, edu device (DMA)
    python examples/precopy.py --device mock         # selftest mock device, emulated writes
    python examples/precopy.py --kernel real         # inside the test VM: the mock device
    python examples/precopy.py --huge-iopte          # 2 MiB IOPTEs: watch it not converge

Guest RAM (two RAM blocks in an AddressSpace) is filled with random bytes; a device is
attached through the VFIO lifecycle with a DIRTY_TRACKING HWPT and writes random pages at
--rate pages/s while pre-copy runs: round 0 sends everything, each later round harvests the
dirty bitmaps of every HWPT (timed) and resends those pages over an emulated --bandwidth
link, until at most --threshold pages remain; then stop-and-copy stops the device, harvests
once more, sends the rest, and compares the destination with the source byte for byte.

The real kernel's selftest mock device has no DMA: there its writes are made by the CPU and
the pages then marked dirty in the mock IOMMU with IOMMU_TEST_OP_DIRTY, so the dirty bits
and their harvest are the real kernel's while the writes are emulated (see
fastmap._tools.dma_writer). Exit status 0 when the destination matches.
"""

from __future__ import annotations

import argparse
import sys

from fastmap._tools.precopy import DemoOptions, run_demo
from fastmap.cli import add_migrate_demo_arguments


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--kernel", choices=("real", "sim"), default="sim", help="default: sim")
    add_migrate_demo_arguments(p)
    a = p.parse_args(argv)
    return run_demo(DemoOptions.from_args(a, a.kernel), print)


if __name__ == "__main__":
    sys.exit(main())
