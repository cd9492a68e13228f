"""The embedded simulated kernel, in Python terms.

`SimKernel` is a `fastmap.kernel.Kernel` whose answers come from the C++ simulator
(csrc/sim/): same structs, errnos, check order and IOVA choices as Linux iommufd, in-process,
with no /dev/iommu needed. `SimConfig` says which kernel it models:

    k = SimKernel(SimConfig(kernel_version=612))   # a 6.12 kernel: no IOMMU_IOAS_MAP_FILE
    k = SimKernel(kernel_version=612)               # the same

The defaults are the C++ SimConfig's (the newest modelled kernel), read from the extension
so they cannot drift.

One machine per process: `shared_kernel()` (what `open_kernel()` gives on the simulator, and
so what `IOMMUFDBackend()` and `VFIODevice(bdf)` without `kernel=` use) is one simulated
machine for the whole process, as there is one kernel on a real host: a device plugged into
it is seen by every object opened later. An explicit `SimKernel()` is a new, isolated
machine (for tests, or to run two machines side by side).
"""

from __future__ import annotations

import dataclasses
import errno
import mmap as mmap_module
import os
import threading
from collections.abc import Sequence
from typing import Any

from fastmap import _checks, _core
from fastmap.kernel import Kernel, _check
from fastmap.pci_address import normalize_bdf

_DEFAULTS = _core.SimConfig()


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """What the simulated kernel models (mirrors csrc/sim/core/config.h)."""

    #: Linux version as major*100+minor (612 = 6.12).
    kernel_version: int = _DEFAULTS.kernel_version
    #: CONFIG_TRANSPARENT_HUGEPAGE: automatic IOVA alignment capped at 2 MiB, else PAGE_SIZE.
    transparent_hugepage: bool = _DEFAULTS.transparent_hugepage
    #: CONFIG_IOMMUFD_TEST: IOMMU_TEST_CMD (mock domains, dirty injection) exists.
    iommufd_test: bool = _DEFAULTS.iommufd_test
    #: vfio_iommu_type1.dma_entry_limit.
    dma_entry_limit: int = _DEFAULTS.dma_entry_limit
    #: the caller holds CAP_SYS_RESOURCE.
    cap_sys_resource: bool = _DEFAULTS.cap_sys_resource
    #: the caller holds CAP_IPC_LOCK (pinned pages are not charged).
    cap_ipc_lock: bool = _DEFAULTS.cap_ipc_lock
    #: RLIMIT_MEMLOCK in bytes, charged when not CAP_IPC_LOCK.
    rlimit_memlock: int = _DEFAULTS.rlimit_memlock

    def to_core(self) -> _core.SimConfig:
        """The C++ SimConfig with these values."""
        core = _core.SimConfig()
        for field in dataclasses.fields(self):
            setattr(core, field.name, getattr(self, field.name))
        return core


@dataclasses.dataclass(frozen=True)
class DmaFault:
    """A device DMA the (simulated) IOMMU refused: `length` bytes at `iova`, read or write,
    failed with `errno` (EFAULT where nothing is mapped, EPERM/EACCES without the right)."""

    iova: int
    length: int
    write: bool
    errno: int

    def __repr__(self) -> str:
        name = errno.errorcode.get(self.errno, str(self.errno))
        what = "write" if self.write else "read"
        return (
            f"DmaFault({what} of {self.length:#x} bytes at iova {self.iova:#x}: "
            f"{name} ({os.strerror(self.errno)}))"
        )


class SimMachine:
    """The simulated machine of a SimKernel (the C++ `_core.SimMachine`), with its PCI
    addresses taken through `fastmap.pci_address.normalize_bdf`: "00:03.0" means
    "0000:00:03.0", and a malformed one is a ValueError naming the argument."""

    def __init__(self, core: _core.SimMachine) -> None:
        self.core = core

    def add_pci_device(
        self,
        bdf: str = "",
        vendor: int = 0x1234,
        device: int = 0x11E8,
        group: int | None = None,
        iommu: str = "vtd",
        dirty: bool = False,
        kind: str = "edu",
    ) -> dict[str, Any]:
        """Plug in a device bound to vfio-pci (at the next free slot of bus 0 without
        `bdf`): {bdf, index, cdev, group, group_path, sysfs}."""
        bdf = normalize_bdf(bdf) if bdf != "" else ""
        return self.core.add_pci_device(bdf, vendor, device, group, iommu, dirty, kind)

    def devices(self) -> list[dict[str, Any]]:
        return self.core.devices()

    def list_dir(self, path: str) -> list[str]:
        return self.core.list_dir(path)

    def read_file(self, path: str) -> str:
        return self.core.read_file(path)

    def read_link(self, path: str) -> str:
        return self.core.read_link(path)

    def dma_faults(self, bdf: str, clear: bool = False) -> list[dict[str, Any]]:
        """The device's failed DMAs, oldest first: [{addr, len, write, error (-errno)}]."""
        return self.core.dma_faults(normalize_bdf(bdf), clear)

    def pci_command(self, bdf: str) -> int:
        """The device's own PCI command register."""
        return self.core.pci_command(normalize_bdf(bdf))

    def edu_buffer(self, bdf: str) -> bytes:
        """The edu device's 4 KiB DMA buffer."""
        return self.core.edu_buffer(normalize_bdf(bdf))

    def dma_writer(
        self,
        bdf: str,
        ranges: Sequence[tuple[int, int]],
        page_size: int = 4096,
        write_size: int | None = None,
        seed: int = 0,
    ) -> _core.SimDmaWriter:
        """A stopped background writer: the device DMA-writes random pages of
        [(iova, length)]."""
        return self.core.dma_writer(normalize_bdf(bdf), ranges, page_size, write_size, seed)


class SimKernel(Kernel):
    """A simulated Linux kernel running in this process."""

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        config = dataclasses.replace(config or SimConfig(), **overrides)
        self._sim = _core.SimKernel(config.to_core())
        super().__init__(self._sim, config.kernel_version)
        self.config = config

    def mmap(
        self, fd: int, length: int, offset: int, prot: int, flags: int = mmap_module.MAP_SHARED
    ) -> int:
        """mmap(2) of a simulated device region: a trapped mapping whose loads and stores
        reach the device model (csrc/sim/core/mmio_trap.h)."""
        fd = _checks.fd_number("fd", fd)
        addr = int(self._sim.mmap(fd, length, prot, flags, offset))
        if addr < 0:
            _check(addr, "mmap", {"fd": fd, "length": length, "offset": offset})
        return addr

    def munmap(self, addr: int, length: int) -> None:
        rc = int(self._sim.munmap(addr, length))
        if rc < 0:
            _check(rc, "munmap", {"addr": addr, "length": length})

    def read(self, fd: int, count: int) -> bytes:
        """read(2) of a simulated file (a VFIO migration data fd, a device region at the
        file position)."""
        fd = _checks.fd_number("fd", fd)
        out = self._sim.read(fd, count)
        if isinstance(out, int):
            _check(out, "read", {"fd": fd, "count": count})
        return bytes(out)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        """write(2) of a simulated file: the bytes written."""
        fd = _checks.fd_number("fd", fd)
        rc = int(self._sim.write(fd, bytes(data)))
        if rc < 0:
            _check(rc, "write", {"fd": fd, "count": len(data)})
        return rc

    @property
    def sim(self) -> _core.SimKernel:
        """The C++ SimKernel."""
        return self._sim

    @property
    def machine(self) -> SimMachine:
        """The simulated machine: plug in PCI devices (`add_pci_device`), read its sysfs."""
        return SimMachine(self._sim.machine)

    def dma_faults(self, bdf: str, *, clear: bool = False) -> list[DmaFault]:
        """The DMAs of device `bdf` that the IOMMU refused, oldest first (`clear` empties
        the log)."""
        return [
            DmaFault(int(f["addr"]), int(f["len"]), bool(f["write"]), -int(f["error"]))
            for f in self.machine.dma_faults(bdf, clear)
        ]

    def pci_devices(self) -> list[str]:
        """The BDFs of the PCI devices plugged into the machine."""
        return [str(d["bdf"]) for d in self._sim.machine.devices()]


_shared: SimKernel | None = None
_shared_lock = threading.Lock()


def shared_kernel() -> SimKernel:
    """The process's simulated machine, made with the default SimConfig on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SimKernel()
        return _shared
