#!/usr/bin/env python3
"""An interrupt-driven edu driver: BAR0 through mmap, DMA completion by MSI.

    python examples/edu_irq_driver.py               # real kernel with /dev/iommu, else sim
    python examples/edu_irq_driver.py --kernel sim  # the simulated kernel (plugs in an edu)
    python examples/edu_irq_driver.py --intx        # legacy INTx instead of MSI

The driver maps BAR0 into the process (VFIO region mmap) and reads and writes edu's
registers as plain loads and stores through a numpy view of it; no pread/pwrite. It enables
MSI with an eventfd (VFIO_DEVICE_SET_IRQS), then copies a random buffer RAM -> device ->
RAM through the edu DMA engine with the command's "raise interrupt" bit set, and after each
transfer sleeps in poll(2) on the eventfd until the device's completion interrupt arrives,
instead of polling the run bit. It acknowledges each interrupt in the device (and, for
INTx, unmasks the line with VFIO). Every byte is compared at the end.

edu registers (QEMU docs/specs/edu.rst), BAR0 offsets: 0x00 identification, 0x04 liveness,
0x24 interrupt status, 0x60 raise, 0x64 acknowledge, 0x80/0x88/0x90/0x98 DMA source,
destination, count and command (bit 0 run, bit 1 to RAM, bit 2 interrupt when done; the
completion sets status bit 0x100). The device buffer is at 0x40000, 4 KiB.

Exit status 0 when every DMA interrupted and every byte matched.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack

import numpy as np

from fastmap import AddressSpace, IOMMUFDBackend, VFIODevice, open_kernel, uapi
from fastmap.lifecycle.device import find_pci_devices

EDU_VENDOR, EDU_DEVICE, EDU_IDENT = 0x1234, 0x11E8, 0x010000ED
REG_IDENT, REG_LIVENESS, REG_IRQ_STATUS, REG_IRQ_ACK = 0x00, 0x04, 0x24, 0x64
REG_DMA_SRC, REG_DMA_DST, REG_DMA_COUNT, REG_DMA_CMD = 0x80, 0x88, 0x90, 0x98
CMD_RUN, CMD_TO_RAM, CMD_IRQ = 0x1, 0x2, 0x4
IRQ_DMA = 0x100
EDU_BUFFER, EDU_BUFFER_SIZE = 0x40000, 4096
SRC_GPA, DST_GPA = 0x0020_0000, 0x0100_0000  # below edu's 28-bit DMA mask


class EduMmio:
    """edu's registers as loads and stores on the mmap()ed BAR0."""

    def __init__(self, regs32: np.ndarray, regs64: np.ndarray) -> None:
        self.r32, self.r64 = regs32, regs64

    def read32(self, off: int) -> int:
        return int(self.r32[off // 4])

    def write32(self, off: int, value: int) -> None:
        self.r32[off // 4] = value

    def write64(self, off: int, value: int) -> None:
        self.r64[off // 8] = value


def run(args: argparse.Namespace) -> int:
    kernel = open_kernel(args.kernel)
    machine = getattr(kernel, "machine", None)
    if machine is not None and not find_pci_devices(kernel, EDU_VENDOR, EDU_DEVICE):
        machine.add_pci_device(vendor=EDU_VENDOR, device=EDU_DEVICE)
    bdfs = find_pci_devices(kernel, EDU_VENDOR, EDU_DEVICE)
    if not bdfs:
        print("no edu device (PCI 1234:11e8) found", file=sys.stderr)
        return 2
    size = args.size
    pattern = os.urandom(size)
    index = uapi.VFIO_PCI_INTX_IRQ_INDEX if args.intx else uapi.VFIO_PCI_MSI_IRQ_INDEX
    kind = "INTx" if args.intx else "MSI"
    with ExitStack() as stack:
        space = stack.enter_context(AddressSpace("edu-irq"))
        page = os.sysconf("SC_PAGE_SIZE")
        src = space.add_ram(-(-size // page) * page, SRC_GPA, name="src")
        dst = space.add_ram(-(-size // page) * page, DST_GPA, name="dst")
        backend = stack.enter_context(IOMMUFDBackend(kernel=kernel))
        dev = VFIODevice(bdfs[0], kernel=kernel)
        dev = stack.enter_context(dev.attach(space, backend, hwpt_alloc=not args.kernel_domains))
        dev.enable_dma()
        bar = stack.enter_context(dev.map_region(uapi.VFIO_PCI_BAR0_REGION_INDEX, length=page))
        edu = EduMmio(bar.array("<u4"), bar.array("<u8"))
        print(f"kernel {kernel.name}: {dev.name} attached; BAR0 mapped at {bar.addr:#x}")
        if edu.read32(REG_IDENT) != EDU_IDENT:
            print(f"identification register reads {edu.read32(REG_IDENT):#x}", file=sys.stderr)
            return 1
        edu.write32(REG_LIVENESS, 0x0F0F0F0F)
        assert edu.read32(REG_LIVENESS) == 0xF0F0F0F0, "liveness check through the mapping"
        irq = stack.enter_context(dev.enable_irq(index))
        print(f"{kind}: {dev.irq_info(index)} -> eventfd {irq.fileno()}")

        src.write(0, pattern)
        dst.write(0, bytes(size))
        interrupts = 0
        waited = 0.0

        def dma(src_addr: int, dst_addr: int, count: int, to_ram: bool) -> None:
            nonlocal interrupts, waited
            edu.write64(REG_DMA_SRC, src_addr)
            edu.write64(REG_DMA_DST, dst_addr)
            edu.write64(REG_DMA_COUNT, count)
            t0 = time.monotonic()
            edu.write64(REG_DMA_CMD, CMD_RUN | CMD_IRQ | (CMD_TO_RAM if to_ram else 0))
            if not irq.wait(args.timeout):  # sleeps in poll(2) on the eventfd
                raise TimeoutError(f"no {kind} within {args.timeout} s of starting the DMA")
            waited += time.monotonic() - t0
            status = edu.read32(REG_IRQ_STATUS)
            if not status & IRQ_DMA:
                raise RuntimeError(f"interrupt with status {status:#x}, not DMA completion")
            edu.write32(REG_IRQ_ACK, status)
            if args.intx:
                irq.unmask()
            interrupts += 1

        for off in range(0, size, EDU_BUFFER_SIZE):
            n = min(EDU_BUFFER_SIZE, size - off)
            dma(SRC_GPA + off, EDU_BUFFER, n, to_ram=False)
            dma(EDU_BUFFER, DST_GPA + off, n, to_ram=True)
        got = dst.read(0, size)
        bad = sum(a != b for a, b in zip(got, pattern, strict=True))
        print(
            f"{interrupts} DMAs, each completed by a {kind} interrupt "
            f"({1000 * waited / max(interrupts, 1):.1f} ms from start to interrupt); "
            + ("every byte matches" if not bad else f"{bad} bytes DIFFER")
        )
    ok = not bad
    print("RESULT edu_irq_driver", "OK" if ok else "FAIL")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--kernel", choices=("real", "sim"), default=None)
    p.add_argument("--intx", action="store_true", help="use INTx instead of MSI")
    p.add_argument(
        "--kernel-domains",
        action="store_true",
        help="let the kernel create the IOMMU domain (virtio-iommu on Linux 6.12)",
    )
    p.add_argument("--size", type=int, default=4 * EDU_BUFFER_SIZE, help="bytes to copy")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per interrupt")
    args = p.parse_args(argv)
    if not 0 < args.size <= DST_GPA - SRC_GPA:
        p.error(f"--size must be in 1..{DST_GPA - SRC_GPA}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
