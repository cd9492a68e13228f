"""An IOAS with a simulated edu device attached (the kernel's auto domain): its IOVA
alignment is the page size, as on a real host once a driver binds a device, and its
usable ranges leave out the device's reserved regions (the x86 MSI window)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastmap import Ioas, IOMMUFDBackend
from fastmap.lifecycle import vfio_iommufd
from fastmap.lifecycle.sysfs import PCI_DEVICES, sysfs_for
from fastmap.sim import SimKernel


@pytest.fixture
def sim() -> SimKernel:
    return SimKernel()


@pytest.fixture
def backend(sim: SimKernel) -> Iterator[IOMMUFDBackend]:
    with IOMMUFDBackend(kernel=sim) as be:
        yield be


@pytest.fixture
def device_ioas(sim: SimKernel, backend: IOMMUFDBackend) -> Iterator[Ioas]:
    bdf = str(sim.machine.add_pci_device(iommu="vtd")["bdf"])
    with (
        vfio_iommufd.open_cdev(sim, sysfs_for(sim), f"{PCI_DEVICES}/{bdf}") as fd,
        backend.alloc_ioas() as ioas,
    ):
        vfio_iommufd.bind(fd, backend)
        vfio_iommufd.attach_pt(fd, ioas.id)
        try:
            yield ioas
        finally:
            ioas.unmap_all()
            vfio_iommufd.detach_pt(fd)
