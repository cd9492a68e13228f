"""A VFIO device: found by PCI address, sysfs path or a pre-opened cdev fd, attached to an
address space through IOMMUFD or the legacy Type1 container, and driven through its regions.

    with IOMMUFDBackend() as be, AddressSpace() as space:
        space.add_ram(16 << 20, gpa=0x100000)
        with VFIODevice("0000:00:03.0", kernel=be.kernel).attach(space, be) as dev:
            dev.write_u64(VFIO_PCI_BAR0_REGION_INDEX, 0x80, 0x100000)   # program the device

`attach(space, backend)` chooses the ops class as QEMU's vfio_attach_device does: IOMMUFD
when a backend is given (`fastmap.lifecycle.vfio_iommufd`), the legacy group + Type1 container
for `attach(space, "legacy")` (`fastmap.lifecycle.vfio_legacy`). Every kernel object it
creates (device fd, HWPT, IOAS, container, group fd, mappings) is released by `detach()` (or
the end of the `with` block), in QEMU's order, and by a failing attach, which undoes exactly
its finished steps.

The same code runs on the real kernel and on the simulated one: sysfs goes through
`fastmap.lifecycle.sysfs` (the real /sys, or the simulated machine's view).
"""

from __future__ import annotations

import posixpath
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from fastmap import uapi
from fastmap._closing import Closing
from fastmap.kernel import Fd, Kernel, KernelKind
from fastmap.lifecycle.irq import DeviceIrq, IrqInfo, irq_info
from fastmap.lifecycle.pci_caps import PciCapability, parse_capabilities
from fastmap.lifecycle.region_map import RegionMapping
from fastmap.lifecycle.sysfs import PCI_DEVICES, Sysfs, sysfs_for
from fastmap.object_id import DeviceId
from fastmap.pci_address import normalize_bdf
from fastmap.seam import open_kernel

if TYPE_CHECKING:
    from fastmap.lifecycle.address_space import AddressSpace
    from fastmap.lifecycle.backend import IOMMUFDBackend
    from fastmap.lifecycle.container import Container
    from fastmap.lifecycle.host_iommu_device import HostIOMMUDevice
    from fastmap.lifecycle.vfio_iommufd import Hwpt, IommufdOps
    from fastmap.lifecycle.vfio_legacy import LegacyOps, VfioGroup

PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY = 1 << 1
PCI_COMMAND_MASTER = 1 << 2


@dataclass(frozen=True)
class RegionInfo:
    """VFIO_DEVICE_GET_REGION_INFO: where a region is in the device fd and what it allows."""

    index: int
    flags: int
    size: int
    offset: int

    @property
    def readable(self) -> bool:
        return bool(self.flags & uapi.VFIO_REGION_INFO_FLAG_READ)

    @property
    def writable(self) -> bool:
        return bool(self.flags & uapi.VFIO_REGION_INFO_FLAG_WRITE)

    @property
    def mmap(self) -> bool:
        return bool(self.flags & uapi.VFIO_REGION_INFO_FLAG_MMAP)


@dataclass(frozen=True)
class DeviceInfo:
    """VFIO_DEVICE_GET_INFO: what kind of device, and how many regions and IRQ indexes."""

    flags: int
    num_regions: int
    num_irqs: int

    @property
    def reset_works(self) -> bool:
        return bool(self.flags & uapi.VFIO_DEVICE_FLAGS_RESET)

    @property
    def pci(self) -> bool:
        return bool(self.flags & uapi.VFIO_DEVICE_FLAGS_PCI)

    def __repr__(self) -> str:
        kinds = [n for n, on in (("pci", self.pci), ("reset", self.reset_works)) if on]
        return (
            f"DeviceInfo(flags={self.flags:#x} [{' '.join(kinds) or '-'}], "
            f"num_regions={self.num_regions}, num_irqs={self.num_irqs})"
        )


def find_pci_devices(kernel: Kernel, vendor: int, device: int) -> list[str]:
    """BDFs of the PCI devices with these ids on `kernel`'s machine."""
    return sysfs_for(kernel).find_pci(vendor, device)


class VFIODevice(Closing):
    """One VFIO device (QEMU's VFIODevice): identity, attach/detach, region access."""

    def __init__(
        self,
        host: str | None = None,
        *,
        sysfsdev: str | None = None,
        fd: int | None = None,
        kernel: Kernel | KernelKind | None = None,
        name: str | None = None,
    ) -> None:
        """Name the device by PCI address (`host`, e.g. "0000:00:03.0"; lspci's "00:03.0"
        is completed with domain 0000, anything else is refused at once), by `sysfsdev`
        (e.g. /sys/bus/pci/devices/0000:00:03.0), or by a pre-opened cdev `fd` (IOMMUFD
        only; the device owns and closes it, as QEMU does). `kernel`: the kernel the device
        is on; by default the backend's at attach, else `open_kernel()`."""
        if host is not None and sysfsdev is not None:
            raise ValueError("name the device by host= or sysfsdev=, not both")
        if host is None and sysfsdev is None and fd is None:
            raise ValueError("name the device by host=, sysfsdev= or fd=")
        if sysfsdev is None and host is not None:
            host = normalize_bdf(host, "host")
            sysfsdev = f"{PCI_DEVICES}/{host}"
        self.sysfsdev = sysfsdev or ""
        self.name = name or (
            posixpath.basename(sysfsdev.rstrip("/")) if sysfsdev else f"VFIO_FD{fd}"
        )
        self._kernel: Kernel | None = kernel if isinstance(kernel, Kernel) else None
        self._kernel_kind: KernelKind | None = None if isinstance(kernel, Kernel) else kernel
        #: A pre-opened cdev fd, until attach takes it.
        self.passed_fd: int | None = fd

        # State while attached (set by the ops classes).
        self.ops: IommufdOps | LegacyOps | None = None
        self.space: AddressSpace | None = None
        self.fd: Fd | None = None
        self.container: Container | None = None
        self.hiod: HostIOMMUDevice | None = None
        # IOMMUFD
        self.backend: IOMMUFDBackend | None = None
        self.dev_id: DeviceId | None = None
        self.hwpt: Hwpt | None = None
        self.iommu_dirty_tracking = False
        # legacy
        self.group: VfioGroup | None = None
        # Interrupts enabled and regions mapped by this object, released at detach.
        self._irqs: list[DeviceIrq] = []
        self._mappings: list[RegionMapping] = []
        # VFIO_DEVICE_GET_INFO
        self.flags = 0
        self.num_regions = 0
        self.num_irqs = 0

    # --- identity ------------------------------------------------------------------------
    @property
    def kernel(self) -> Kernel:
        """The kernel the device is on."""
        if self._kernel is None:
            self._kernel = open_kernel(self._kernel_kind)
        return self._kernel

    @property
    def attached(self) -> bool:
        return self.ops is not None

    @property
    def reset_works(self) -> bool:
        return bool(self.flags & uapi.VFIO_DEVICE_FLAGS_RESET)

    # --- attach / detach -----------------------------------------------------------------------
    def attach(
        self,
        space: AddressSpace,
        backend: IOMMUFDBackend | Literal["legacy"],
        *,
        hwpt_alloc: bool = True,
    ) -> VFIODevice:
        """Attach to `space` through IOMMUFD (`backend` an IOMMUFDBackend) or through the
        legacy group + Type1 container (`backend="legacy"`): the choice is always explicit.
        Returns self (a context manager that detaches).

        IOMMUFD domains are allocated with IOMMU_HWPT_ALLOC as QEMU does; `hwpt_alloc=False`
        attaches to the IOAS and lets the kernel make the domain instead (needed with
        virtio-iommu on Linux 6.12, whose allocated domains have no aperture)."""
        from fastmap.lifecycle.vfio_iommufd import IommufdOps
        from fastmap.lifecycle.vfio_legacy import LegacyOps

        if self.ops is not None:
            raise RuntimeError(f"{self.name} is already attached")
        if backend is None or (isinstance(backend, str) and backend != "legacy"):
            raise TypeError(
                f"attach({backend!r}): pass an IOMMUFDBackend to attach through IOMMUFD, or "
                "'legacy' for the Type1 container"
            )
        if not isinstance(backend, str):
            if self._kernel is None and self._kernel_kind is None:
                self._kernel = backend.kernel
            if self.kernel.core is not backend.kernel.core:
                raise ValueError(
                    f"{self.name} is on the {self.kernel.name} kernel but the backend uses "
                    f"another ({backend.kernel.name}) kernel"
                )
        ops: IommufdOps | LegacyOps = (
            LegacyOps() if isinstance(backend, str) else IommufdOps(backend, hwpt_alloc=hwpt_alloc)
        )
        ops.attach_device(self, space, self.sysfs)
        self.ops = ops
        self.space = space
        return self

    def detach(self) -> None:
        """Undo attach, in QEMU's order (idempotent)."""
        ops, self.ops = self.ops, None
        if ops is None:
            return
        for owned in [*self._irqs, *self._mappings]:
            owned.close()
        self._irqs.clear()
        self._mappings.clear()
        ops.detach_device(self)
        self.space = None

    def close(self) -> None:
        """Detach (the end of a `with` block)."""
        self.detach()

    def __repr__(self) -> str:
        if self.ops is None:
            return f"<VFIODevice {self.name} detached>"
        return f"<VFIODevice {self.name} via {self.ops.name} fd {self.fd.fd if self.fd else None}>"

    @property
    def sysfs(self) -> Sysfs:
        return sysfs_for(self.kernel)

    # --- device calls --------------------------------------------------------------------------
    def _fd(self) -> Fd:
        if self.fd is None:
            raise RuntimeError(f"{self.name} is not attached")
        return self.fd

    def read_device_info(self) -> DeviceInfo:
        """VFIO_DEVICE_GET_INFO: flags, number of regions and IRQs (also kept as the
        device's `flags`, `num_regions` and `num_irqs`)."""
        raw = uapi.new(uapi.vfio_device_info)
        self._fd().ioctl(uapi.VFIO_DEVICE_GET_INFO, raw)
        info = DeviceInfo(int(raw.flags), int(raw.num_regions), int(raw.num_irqs))
        self.flags, self.num_regions, self.num_irqs = info.flags, info.num_regions, info.num_irqs
        return info

    def region_info(self, index: int) -> RegionInfo:
        """VFIO_DEVICE_GET_REGION_INFO."""
        info = uapi.new(uapi.vfio_region_info, index=index)
        self._fd().ioctl(uapi.VFIO_DEVICE_GET_REGION_INFO, info)
        return RegionInfo(index, int(info.flags), int(info.size), int(info.offset))

    def read(self, index: int, offset: int, length: int) -> bytes:
        """pread `size` bytes at `offset` in region `index`."""
        region = self.region_info(index)
        _check_access(region, offset, length)
        data = self._fd().pread(length, region.offset + offset)
        if len(data) != length:
            raise OSError(f"short read of region {index} at {offset:#x}: {len(data)}/{length}")
        return data

    def write(self, index: int, offset: int, data: bytes) -> None:
        """pwrite `data` at `offset` in region `index`."""
        region = self.region_info(index)
        _check_access(region, offset, len(data))
        n = self._fd().pwrite(data, region.offset + offset)
        if n != len(data):
            raise OSError(f"short write to region {index} at {offset:#x}: {n}/{len(data)}")

    def read_u16(self, index: int, offset: int) -> int:
        return int(struct.unpack("<H", self.read(index, offset, 2))[0])

    def read_u32(self, index: int, offset: int) -> int:
        return int(struct.unpack("<I", self.read(index, offset, 4))[0])

    def read_u64(self, index: int, offset: int) -> int:
        return int(struct.unpack("<Q", self.read(index, offset, 8))[0])

    def write_u16(self, index: int, offset: int, value: int) -> None:
        self.write(index, offset, struct.pack("<H", value))

    def write_u32(self, index: int, offset: int, value: int) -> None:
        self.write(index, offset, struct.pack("<I", value))

    def write_u64(self, index: int, offset: int, value: int) -> None:
        self.write(index, offset, struct.pack("<Q", value))

    def enable_dma(self) -> int:
        """Turn on memory decoding and bus mastering in the PCI command register (a device
        can neither answer BAR accesses nor DMA before). Returns the new command value."""
        cfg = uapi.VFIO_PCI_CONFIG_REGION_INDEX
        cmd = self.read_u16(cfg, PCI_COMMAND) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
        self.write_u16(cfg, PCI_COMMAND, cmd)
        return self.read_u16(cfg, PCI_COMMAND)

    def reset(self) -> None:
        """VFIO_DEVICE_RESET."""
        self._fd().ioctl(uapi.VFIO_DEVICE_RESET)

    # --- interrupts, mappings, capabilities ----------------------------------------------------
    def irq_info(self, index: int) -> IrqInfo:
        """VFIO_DEVICE_GET_IRQ_INFO (index: uapi.VFIO_PCI_*_IRQ_INDEX)."""
        return irq_info(self._fd(), index)

    def enable_irq(self, index: int = uapi.VFIO_PCI_MSI_IRQ_INDEX, vector: int = 0) -> DeviceIrq:
        """Deliver interrupt `vector` of `index` (MSI by default) to a new eventfd
        (fastmap.lifecycle.irq). Closing the DeviceIrq, or detaching, turns it off."""
        irq = DeviceIrq(self._fd(), index, vector)
        self._irqs = [i for i in self._irqs if i.fileno_or_none() is not None]
        self._irqs.append(irq)
        return irq

    def wait_irq(self, timeout: float | None = None) -> int:
        """Wait for the interrupt enabled last (see enable_irq): how many arrived, 0 on
        timeout."""
        live = [i for i in self._irqs if i.fileno_or_none() is not None]
        if not live:
            raise RuntimeError(f"{self.name} has no interrupt enabled (enable_irq first)")
        return live[-1].wait(timeout)

    def map_region(
        self, index: int, *, offset: int = 0, length: int | None = None, writable: bool = True
    ) -> RegionMapping:
        """mmap a region (a BAR) into this process (fastmap.lifecycle.region_map). Closing
        the mapping, or detaching, unmaps it."""
        mapping = RegionMapping(
            self._fd(), self.region_info(index), offset=offset, length=length, writable=writable
        )
        self._mappings.append(mapping)
        return mapping

    def capabilities(self) -> list[PciCapability]:
        """The PCI capabilities in the device's config space (fastmap.lifecycle.pci_caps)."""
        cfg = self.region_info(uapi.VFIO_PCI_CONFIG_REGION_INDEX)
        return parse_capabilities(self.read(cfg.index, 0, cfg.size))


def _check_access(region: RegionInfo, offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > region.size:
        raise ValueError(
            f"[{offset:#x}, +{length:#x}) is outside region {region.index} ({region.size:#x} bytes)"
        )
