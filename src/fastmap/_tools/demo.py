"""`fastmap demo`: the whole path in one short run, on the simulated kernel by default.

1. an IOMMUFDBackend owns /dev/iommu (the simulated kernel's when there is no real one);
2. a VFIO device (QEMU's edu, a small DMA engine; plugged into the simulated machine) is
   bound and attached the way QEMU 10 does it, which gives an IOAS with an IOMMU domain;
3. a numpy buffer is mapped into the IOAS (pinned while mapped), plus a batch of 100,000
   4 KiB mappings in one call;
4. the device DMAs through the IOMMU: buffer -> device -> buffer, checked byte for byte;
5. the buffer is unmapped, and a DMA to it is now blocked by the IOMMU.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable
from contextlib import ExitStack

import numpy as np

from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice, find_pci_devices

EDU_VENDOR, EDU_DEVICE = 0x1234, 0x11E8
BAR0 = 0
REG_DMA_SRC, REG_DMA_DST, REG_DMA_COUNT, REG_DMA_CMD = 0x80, 0x88, 0x90, 0x98
CMD_RUN, CMD_TO_RAM = 0x1, 0x2
EDU_BUFFER = 0x40000  # the device's own 4 KiB buffer, in its address space
BUF_IOVA = 0x0200_0000  # below edu's 28-bit DMA mask
BATCH = 100_000


def _dma(dev: VFIODevice, src: int, dst: int, count: int, to_ram: bool) -> None:
    dev.write_u64(BAR0, REG_DMA_SRC, src)
    dev.write_u64(BAR0, REG_DMA_DST, dst)
    dev.write_u64(BAR0, REG_DMA_COUNT, count)
    dev.write_u64(BAR0, REG_DMA_CMD, CMD_RUN | (CMD_TO_RAM if to_ram else 0))
    deadline = time.monotonic() + 10
    while dev.read_u64(BAR0, REG_DMA_CMD) & CMD_RUN:
        if time.monotonic() > deadline:
            raise TimeoutError("edu DMA did not complete")
        time.sleep(0.001)


def run_demo(kernel: Kernel, say: Callable[[str], object]) -> int:
    """Run the demo on `kernel`, reporting through `say`; 0 when every check passed."""
    machine = getattr(kernel, "machine", None)
    if machine is not None and not find_pci_devices(kernel, EDU_VENDOR, EDU_DEVICE):
        machine.add_pci_device(vendor=EDU_VENDOR, device=EDU_DEVICE, iommu="vtd")
    bdfs = find_pci_devices(kernel, EDU_VENDOR, EDU_DEVICE)
    if not bdfs:
        say("no edu device (PCI 1234:11e8) on this machine")
        return 2
    say(f"kernel: {kernel!r}")
    ok = True
    with ExitStack() as stack:
        backend = stack.enter_context(IOMMUFDBackend(kernel=kernel))
        space = stack.enter_context(AddressSpace("demo"))
        dev = stack.enter_context(VFIODevice(bdfs[0], kernel=kernel).attach(space, backend))
        container = dev.container
        assert container is not None and dev.hiod is not None
        ioas = container.ioas  # type: ignore[attr-defined]
        say(
            f"1-2. backend fd open; {dev.name} bound and attached: IOAS {ioas.id}, IOMMU "
            f"{dev.hiod.type_name}, usable IOVA "
            + ", ".join(f"[{r.start:#x}, {r.last:#x}]" for r in ioas.iova_ranges())
        )
        dev.enable_dma()

        # With an IOMMU domain, maps are page-granular: page-aligned memory from mmap.
        buf = np.frombuffer(mmap.mmap(-1, 4096), np.uint8)
        ioas.map(buf, iova=BUF_IOVA)
        # Private memory: the simulator pins it in place (shared memory costs it a
        # /proc/self/maps lookup per pin, see docs/architecture.md).
        pages = np.frombuffer(mmap.mmap(-1, 64 * 4096, flags=mmap.MAP_PRIVATE), np.uint8)
        # 100,000 page mappings of 64 real pages (a VA may be mapped at several IOVAs).
        vas = pages.ctypes.data + (np.arange(BATCH, dtype=np.uint64) % 64) * 4096
        # Fixed, dense IOVAs: the kernel's automatic choice is a first-fit walk from the
        # bottom of the IOVA space, linear in the number of areas.
        iovas = (1 << 32) + np.arange(BATCH, dtype=np.uint64) * 4096
        t0 = time.perf_counter()
        ioas.map_batch(vas, np.full(BATCH, 4096), iovas)
        batch_s = time.perf_counter() - t0
        say(
            f"3. mapped a numpy buffer at IOVA {BUF_IOVA:#x} (pinned: "
            f"{ioas.pinned(BUF_IOVA)}) and a batch of {BATCH:,} mappings in one call "
            f"({batch_s * 1e3:.1f} ms, {BATCH / batch_s:,.0f} maps/s)"
        )
        ioas.unmap_batch(iovas, np.full(BATCH, 4096))

        pattern = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)
        buf[:] = pattern
        _dma(dev, BUF_IOVA, EDU_BUFFER, 4096, to_ram=False)  # RAM -> device
        buf[:] = 0
        _dma(dev, EDU_BUFFER, BUF_IOVA, 4096, to_ram=True)  # device -> RAM
        same = bool((buf == pattern).all())
        ok &= same
        say(
            "4. DMA buffer -> edu -> buffer through the IOMMU: "
            + ("all 4096 bytes match" if same else "MISMATCH")
        )

        ioas.unmap(BUF_IOVA, 4096)
        buf[:] = 0xAA
        _dma(dev, EDU_BUFFER, BUF_IOVA, 4096, to_ram=True)
        blocked = bool((buf == 0xAA).all())
        ok &= blocked
        faults = machine.dma_faults(dev.name) if machine is not None else []
        say(
            f"5. unmapped; a DMA to IOVA {BUF_IOVA:#x} is "
            + ("blocked by the IOMMU" if blocked else "NOT BLOCKED")
            + (f" (device fault log: {faults[-1]})" if faults else "")
        )
    say("detached; device, IOAS, domain and /dev/iommu released in QEMU's order")
    say("demo " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1
