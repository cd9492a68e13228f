#!/usr/bin/env python3
"""A userspace driver for QEMU's edu device: DMA through the IOMMU, checked byte for byte.

    python examples/edu_dma.py              # IOMMUFD (VFIO cdev + iommufd)
    python examples/edu_dma.py --legacy     # IOMMU group + Type1 container
    python examples/edu_dma.py --kernel sim # the simulated kernel (the default without
                                            # /dev/iommu); it plugs in an edu device

What it does, with fastmap's device lifecycle (the same steps QEMU 10 takes for vfio-pci):
find the edu device (PCI 1234:11e8) through sysfs, put guest RAM (a source and a
destination block) in an AddressSpace, attach the device (the container maps all RAM at
IOVA = guest physical address), enable memory decoding and bus mastering, then copy a random
buffer RAM -> device -> RAM through the edu DMA engine, 4 KiB (the device buffer) at a time,
programming BAR0 with pwrite/pread on the VFIO device fd. Every byte is compared. A last DMA
to an unmapped address must be stopped by the IOMMU. Then everything is detached.

edu registers (QEMU docs/specs/edu.rst), BAR0 offsets: 0x00 identification (0x010000ed),
0x04 liveness (reads back inverted), 0x80 DMA source, 0x88 DMA destination, 0x90 DMA count,
0x98 DMA command (bit 0 run, bit 1 direction: 1 = device to RAM, bit 2 raise an IRQ). The
device buffer is at device address 0x40000, 4 KiB. edu masks DMA addresses to 28 bits, so
the RAM sits below 256 MiB. On QEMU each transfer takes about 100 ms (a timer), so the
driver polls the run bit with a timeout; the simulated edu completes at once.

Exit status 0 when every byte matched and the IOMMU stopped the stray DMA.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from typing import Literal

from fastmap import AddressSpace, IOMMUFDBackend, Kernel, VFIODevice, open_kernel
from fastmap.lifecycle.device import find_pci_devices
from fastmap.ram import RAM_KINDS, default_hugepage_size

EDU_VENDOR, EDU_DEVICE = 0x1234, 0x11E8
EDU_IDENT = 0x010000ED
REG_IDENT, REG_LIVENESS = 0x00, 0x04
REG_DMA_SRC, REG_DMA_DST, REG_DMA_COUNT, REG_DMA_CMD = 0x80, 0x88, 0x90, 0x98
CMD_RUN, CMD_TO_RAM = 0x1, 0x2
EDU_BUFFER, EDU_BUFFER_SIZE = 0x40000, 4096
BAR0 = 0  # VFIO_PCI_BAR0_REGION_INDEX

# Guest physical addresses (= IOVAs): below edu's 28-bit DMA mask, away from page 0,
# aligned for 2 MiB huge pages.
SRC_GPA = 0x0020_0000
DST_GPA = 0x0100_0000
UNMAPPED_GPA = 0x0800_0000


class Edu:
    """The edu device's registers, reached with pread/pwrite on its VFIO BAR0 region."""

    def __init__(self, dev: VFIODevice, timeout: float) -> None:
        self.dev = dev
        self.timeout = timeout
        self.bar0 = dev.region_info(BAR0)

    def check_alive(self) -> None:
        ident = self.dev.read_u32(BAR0, REG_IDENT)
        if ident != EDU_IDENT:
            raise RuntimeError(f"identification register is {ident:#x}, not edu's {EDU_IDENT:#x}")
        self.dev.write_u32(BAR0, REG_LIVENESS, 0x12345678)
        alive = self.dev.read_u32(BAR0, REG_LIVENESS)
        if alive != ~0x12345678 & 0xFFFFFFFF:
            raise RuntimeError(f"liveness register read back {alive:#x}")

    def dma(self, src: int, dst: int, count: int, to_ram: bool) -> float:
        """One transfer; returns how long the device took. TimeoutError if it never ends."""
        self.dev.write_u64(BAR0, REG_DMA_SRC, src)
        self.dev.write_u64(BAR0, REG_DMA_DST, dst)
        self.dev.write_u64(BAR0, REG_DMA_COUNT, count)
        t0 = time.monotonic()
        self.dev.write_u64(BAR0, REG_DMA_CMD, CMD_RUN | (CMD_TO_RAM if to_ram else 0))
        while self.dev.read_u64(BAR0, REG_DMA_CMD) & CMD_RUN:
            if time.monotonic() - t0 > self.timeout:
                raise TimeoutError(f"edu DMA did not complete within {self.timeout} s")
            time.sleep(0.001)
        return time.monotonic() - t0


def prepare_sim(kernel: Kernel) -> None:
    """Plug an edu device into the simulated machine if it has none."""
    machine = getattr(kernel, "machine", None)
    if machine is not None and not find_pci_devices(kernel, EDU_VENDOR, EDU_DEVICE):
        info = machine.add_pci_device(vendor=EDU_VENDOR, device=EDU_DEVICE, iommu="vtd")
        print(f"sim: plugged an edu device in at {info['bdf']} (IOMMU group {info['group']})")


def run(args: argparse.Namespace) -> int:
    kernel = open_kernel(args.kernel)
    print(f"kernel: {kernel!r}")
    if kernel.name == "sim":
        prepare_sim(kernel)
    bdfs = [args.bdf] if args.bdf else find_pci_devices(kernel, EDU_VENDOR, EDU_DEVICE)
    if not bdfs:
        print("no edu device (PCI 1234:11e8) found", file=sys.stderr)
        return 2
    bdf = bdfs[0]
    size = args.size
    pattern = os.urandom(size)

    with ExitStack() as stack:
        space = stack.enter_context(AddressSpace("edu-guest"))
        granule = default_hugepage_size() if args.ram == "hugetlb" else os.sysconf("SC_PAGE_SIZE")
        ram_size = -(-size // granule) * granule
        src = space.add_ram(ram_size, SRC_GPA, args.ram, name="src")
        dst = space.add_ram(ram_size, DST_GPA, args.ram, name="dst")
        backend: IOMMUFDBackend | Literal["legacy"] = "legacy"
        if not args.legacy:
            backend = stack.enter_context(IOMMUFDBackend(kernel=kernel))
        dev = VFIODevice(bdf, kernel=kernel)
        dev = stack.enter_context(dev.attach(space, backend, hwpt_alloc=not args.kernel_domains))
        c = dev.container
        assert c is not None and dev.hiod is not None
        print(
            f"guest RAM: {src!r}, {dst!r}\n"
            f"attached {dev.name} via {dev.ops.name if dev.ops else '?'}: {c!r}; "
            f"IOMMU {dev.hiod.type_name}, address width {dev.hiod.aw_bits} bits, "
            f"dirty tracking {dev.hiod.dirty_tracking}; IOVA ranges "
            + ", ".join(f"[{r.start:#x}, {r.last:#x}]" for r in c.iova_ranges)
        )
        cmd = dev.enable_dma()
        print(f"PCI command register {cmd:#06x} (memory space + bus master)")
        edu = Edu(dev, args.timeout)
        edu.check_alive()
        print(f"BAR0: {edu.bar0.size >> 10} KiB at fd offset {edu.bar0.offset:#x}; edu is alive")

        src.write(0, pattern)
        dst.write(0, bytes(len(pattern)))
        times = []
        for off in range(0, size, EDU_BUFFER_SIZE):
            n = min(EDU_BUFFER_SIZE, size - off)
            times.append(edu.dma(SRC_GPA + off, EDU_BUFFER, n, to_ram=False))
            times.append(edu.dma(EDU_BUFFER, DST_GPA + off, n, to_ram=True))
        got = dst.read(0, size)
        bad = sum(a != b for a, b in zip(got, pattern, strict=True))
        print(
            f"copied {size} random bytes RAM(IOVA {SRC_GPA:#x}) -> edu -> RAM(IOVA {DST_GPA:#x}) "
            f"in {len(times)} DMAs ({1000 * sum(times) / len(times):.1f} ms each): "
            + ("every byte matches" if not bad else f"{bad} bytes DIFFER")
        )

        # The IOMMU must stop a DMA to an address no container maps.
        before_src, before_dst = src.read(0, size), dst.read(0, size)
        edu.dma(EDU_BUFFER, UNMAPPED_GPA, EDU_BUFFER_SIZE, to_ram=True)
        blocked = src.read(0, size) == before_src and dst.read(0, size) == before_dst
        faults = ""
        machine = getattr(kernel, "machine", None)
        if machine is not None:
            faults = f" (simulated device's fault log: {machine.dma_faults(dev.name)})"
        print(
            f"DMA to unmapped IOVA {UNMAPPED_GPA:#x}: "
            + ("blocked" if blocked else "CORRUPTED guest RAM")
            + faults
        )
    print(f"detached; address space and {'container' if args.legacy else 'iommufd'} released")
    ok = not bad and blocked
    print("RESULT edu_dma", "OK" if ok else "FAIL")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--legacy", action="store_true", help="attach via group + Type1 container")
    p.add_argument(
        "--kernel",
        choices=("real", "sim"),
        default=None,
        help="default: $FASTMAP_KERNEL, else real where /dev/iommu exists, else sim",
    )
    p.add_argument(
        "--kernel-domains",
        action="store_true",
        help="IOMMUFD: attach to the IOAS and let the kernel create the domain instead of "
        "IOMMU_HWPT_ALLOC (needed with virtio-iommu on Linux 6.12)",
    )
    p.add_argument("--bdf", help="the edu device's PCI address (default: the first edu)")
    p.add_argument("--size", type=int, default=4 * EDU_BUFFER_SIZE, help="bytes to copy")
    p.add_argument("--ram", choices=RAM_KINDS, default="anon", help="guest RAM backing")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per DMA")
    args = p.parse_args(argv)
    if not 0 < args.size <= DST_GPA - SRC_GPA:
        p.error(f"--size must be in 1..{DST_GPA - SRC_GPA}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
