"""Fixtures for the device lifecycle tests.

Tests that take `kernel` run on the simulated kernel and, inside the test VM
(tools/vmtest/run.sh), on the real one. `edu` is the PCI address of an edu device bound to
vfio-pci: plugged into the simulated machine, or the VM's own. `fk` is the same kernel
wrapped in a FaultyKernel (records calls, injects failures).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.sysfs import HostSysfs
from fastmap.lifecycle.vfio_iommufd import bind, open_cdev, query_iova_ranges
from tests.facilities import missing
from tests.lifecycle.faulty import FaultyKernel
from tests.script_module import load_script

EDU_VENDOR, EDU_DEVICE = 0x1234, 0x11E8
RAM_GPA = 0x100000  # below edu's 28-bit DMA mask, inside every IOMMU's aperture
MOCK_RAM_GPA = 0x2000000  # inside the mock IOMMU's aperture [16 MiB, 2 GiB)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "edu_dma.py"


def load_example() -> ModuleType:
    """examples/edu_dma.py as a module (its Edu class drives the device in tests)."""
    return load_script(EXAMPLE, "fastmap_example_edu_dma")


def add_sim_device(kernel: Kernel, **kw: object) -> str:
    """Plug a device into the simulated machine; its BDF."""
    machine = getattr(kernel, "machine", None)
    if machine is None:
        pytest.skip("needs the simulated machine (more devices than the VM has)")
    return str(machine.add_pci_device(**kw)["bdf"])


@pytest.fixture
def edu(kernel: Kernel) -> str:
    """The BDF of an edu device bound to vfio-pci on this transport."""
    if kernel.name == "sim":
        return add_sim_device(kernel)
    sysfs = HostSysfs()
    for bdf in sysfs.find_pci(EDU_VENDOR, EDU_DEVICE):
        if sysfs.driver(f"/sys/bus/pci/devices/{bdf}") == "vfio-pci":
            return bdf
    missing("vfio", "no edu device bound to vfio-pci (tools/vmtest/guest-setup.sh binds it)")


@pytest.fixture
def two_edus(kernel: Kernel) -> tuple[str, str]:
    """Two edu devices bound to vfio-pci, in IOMMU groups of their own: plugged into the
    simulated machine, or the VM's when it has two (tools/vmtest/run.sh --edus 2)."""
    if kernel.name == "sim":
        return add_sim_device(kernel), add_sim_device(kernel)
    sysfs = HostSysfs()
    bound = [
        bdf
        for bdf in sysfs.find_pci(EDU_VENDOR, EDU_DEVICE)
        if sysfs.driver(f"/sys/bus/pci/devices/{bdf}") == "vfio-pci"
    ]
    if len(bound) < 2:
        pytest.skip("the VM has one edu device (tools/vmtest/run.sh --edus 2 plugs in two)")
    return bound[0], bound[1]


@pytest.fixture
def fk(kernel: Kernel) -> FaultyKernel:
    return FaultyKernel(kernel)


@pytest.fixture
def space() -> Iterator[AddressSpace]:
    with AddressSpace("test") as s:
        s.add_ram(2 << 20, RAM_GPA)
        yield s


_HWPT_ALLOC_WORKS: dict[str, bool] = {}


@pytest.fixture
def hwpt_alloc(kernel: Kernel, edu: str) -> bool:
    """Whether IOMMU_HWPT_ALLOC gives the edu's IOMMU a usable aperture on this kernel.

    virtio-iommu on Linux 6.12 finalises a domain's geometry only when it is attached, so
    an IOAS whose HWPT was allocated first offers the single IOVA 0 (tests then attach
    with hwpt_alloc=False, letting the kernel create the domain).
    """
    if kernel.name == "sim":
        return True
    if kernel.name not in _HWPT_ALLOC_WORKS:
        with (
            IOMMUFDBackend(kernel=kernel) as be,
            open_cdev(kernel, HostSysfs(), f"/sys/bus/pci/devices/{edu}") as fd,
        ):
            dev_id = bind(fd, be)
            with be.alloc_ioas() as ioas:
                hwpt = be.alloc_hwpt(dev_id, ioas.id)
                ranges, _ = query_iova_ranges(be, ioas.id)
                be.free_id(hwpt)
        _HWPT_ALLOC_WORKS[kernel.name] = any(r.last > 0 for r in ranges)
    return _HWPT_ALLOC_WORKS[kernel.name]
