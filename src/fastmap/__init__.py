"""fastmap: a high-performance DMA mapping engine for Linux userspace.

Start here: open an IOMMUFD backend (the real /dev/iommu, or the embedded simulated kernel
where there is none), make an I/O address space, and map memory into it::

    import numpy as np
    import fastmap

    with fastmap.IOMMUFDBackend() as be, be.ioas() as ioas:
        buf = np.zeros(1 << 20, np.uint8)
        iova = ioas.map(buf)                       # pinned until unmapped
        ioas.unmap(iova, buf.nbytes)

Then, in the source tree's docs/: guide.md (IOAS, batches, the allocator, translation, DMA
memory, devices, interrupts, dirty tracking, the Cython API, in that order), errors.md
(every errno of every call: what it means, what to do), real-host.md (modules, binding
devices, permissions, memlock, huge pages). On the command line, ``fastmap doctor`` says
whether this host can run on the real kernel and what to fix; ``fastmap demo`` runs the
whole path on the simulator.

Everything named in ``fastmap.__all__`` is importable from ``fastmap`` itself. The package,
top down (docs/architecture.md has the layer diagram and the vocabulary):

Mapping
    `Ioas` (ioas.py): map/unmap (single and batched, all or nothing), translation VA<->IOVA.
    `Prot` (prot.py): what a device may do with a mapping (READ, WRITE, RW).
    `DmaMemory` (dma_memory.py): page/2 MiB/1 GiB-aligned memory for devices, as numpy.
    `IovaAllocator`, `IovaRange` (allocator.py): the C++ IOVA allocator (`Ioas.allocator`).
Devices: the QEMU-shaped lifecycle (fastmap.lifecycle)
    `IOMMUFDBackend` (lifecycle/backend.py): the iommufd fd and its objects.
    `AddressSpace` (lifecycle/address_space.py): guest RAM (`RamBlock`, ram.py) at GPAs.
    `VFIODevice` (lifecycle/device.py): bind/attach a VFIO device, BAR access.
    `Container`, `IommufdContainer`, `LegacyContainer`, `HostIOMMUDevice`, `Hwpt`:
    the containers an `AddressSpace` is mapped through, one per IOMMU setup.
Dirty tracking and migration
    `DirtyHarvester` (dirty.py): read and clear HWPT dirty bitmaps, in C++.
    `DirtyTracker` (migration.py): per-RAM-block dirty pages across every container.
    `fastmap.bitmap`: word-at-a-time operations on the kernel's bitmap layout.
Raw access: the ioctl seam
    `open_kernel`, `Kernel`, `Fd` (kernel.py, seam.py): open/ioctl/close on either kernel.
    `SimKernel`, `SimConfig`, `shared_kernel` (sim.py): the simulated Linux, in-process
    (one shared machine per process; `SimKernel()` is an isolated one).
    `fastmap.uapi`: every uAPI struct and constant, as ctypes.
Errors
    `FastmapError` is the base of every error; a failed kernel call is a `KernelError` (an
    `OSError` naming the call, errno, fields and a likely cause); `fastmap.errors` has one
    subclass per errno family and the lifecycle's errors and warnings.

Host setup
    `fastmap.host`: ``fastmap doctor`` (diagnose_host, describe_sim) and ``fastmap bind`` /
    ``unbind`` (bind_device, unbind_device: vfio-pci through driver_override).

Internal: ``fastmap._tools`` (benchmarks, demos, test rigs behind the ``fastmap`` CLI),
``fastmap._core`` (the C++ extension), and other ``_``-prefixed modules.
"""

from __future__ import annotations

from fastmap import bitmap, errors, uapi
from fastmap.allocator import IovaAllocator, IovaRange
from fastmap.dirty import DirtyHarvester, Harvest
from fastmap.dma_memory import DmaMemory
from fastmap.errors import (
    BatchError,
    FastmapError,
    KernelError,
    LifecycleWarning,
    StaleObjectError,
    VFIOError,
)
from fastmap.ioas import Ioas
from fastmap.kernel import Fd, Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.container import Container
from fastmap.lifecycle.device import VFIODevice
from fastmap.lifecycle.host_iommu_device import HostIOMMUDevice
from fastmap.lifecycle.vfio_iommufd import Hwpt, IommufdContainer
from fastmap.lifecycle.vfio_legacy import LegacyContainer
from fastmap.migration import BlockDirty, DirtyTracker, SyncResult
from fastmap.object_id import DeviceId, HwptId, ObjectId
from fastmap.prot import Prot
from fastmap.ram import RamBlock
from fastmap.seam import open_kernel
from fastmap.sim import SimConfig, SimKernel, shared_kernel

__version__ = "0.1.0"

__all__ = [
    "AddressSpace",
    "BatchError",
    "BlockDirty",
    "Container",
    "DeviceId",
    "DirtyHarvester",
    "DirtyTracker",
    "DmaMemory",
    "FastmapError",
    "Fd",
    "Harvest",
    "HostIOMMUDevice",
    "Hwpt",
    "HwptId",
    "IOMMUFDBackend",
    "Ioas",
    "IommufdContainer",
    "IovaAllocator",
    "IovaRange",
    "Kernel",
    "KernelError",
    "LegacyContainer",
    "LifecycleWarning",
    "ObjectId",
    "Prot",
    "RamBlock",
    "SimConfig",
    "SimKernel",
    "StaleObjectError",
    "SyncResult",
    "VFIODevice",
    "VFIOError",
    "__version__",
    "bitmap",
    "errors",
    "get_include",
    "open_kernel",
    "shared_kernel",
    "uapi",
]


def get_include() -> str:
    """The directory holding fastmap_capi.h (and fastmap_sim.h), for C and Cython clients
    of fastmap's C-level API (add it to include_dirs; capi.pxd is cimported from the
    package). The C API header lives in csrc/capi and is installed here as package data."""
    import os

    return os.path.dirname(os.path.abspath(__file__))
