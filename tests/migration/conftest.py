"""Fixtures and helpers for the migration tests (dirty tracking, unmap, pre-copy).

Tests that take `kernel` run on the simulated kernel and, inside the test VM
(tools/vmtest/run.sh), on the real one: there the dirty-capable device is the iommufd
selftest mock device (`MockDevice`), since the VM's IOMMUs have no dirty tracking. Tests that
need DMA into guest memory through a dirty-tracking IOMMU use simulated edu devices (VT-d
with dirty tracking, or the mock IOMMU), whose DMA engine really writes through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from numpy.typing import NDArray

from fastmap import uapi
from fastmap.errors import KernelError
from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice
from fastmap.lifecycle.vfio_iommufd import IommufdContainer
from fastmap.ram import PAGE_SIZE
from tests.facilities import missing
from tests.lifecycle.conftest import (  # noqa: F401  (fixtures)
    MOCK_RAM_GPA,
    add_sim_device,
    edu,
    fk,
    hwpt_alloc,
    load_example,
)

PAGE = PAGE_SIZE
EDU_BUFFER = 0x40000
#: Guest RAM inside the mock IOMMU's aperture and below edu's 28-bit DMA mask.
GPA = MOCK_RAM_GPA


def set_bits(bm: NDArray[np.uint64], nbits: int) -> set[int]:
    """Indices of the set bits among the first nbits."""
    flat = np.unpackbits(bm.view(np.uint8), bitorder="little")[:nbits]
    return {int(i) for i in np.flatnonzero(flat)}


def dma_write(dev: VFIODevice, gpa: int, n: int = 64) -> None:
    """The edu device DMA-writes n bytes of its buffer to guest address gpa."""
    load_example().Edu(dev, timeout=10.0).dma(EDU_BUFFER, gpa, n, to_ram=True)


def dma_write_pages(dev: VFIODevice, base: int, pages: Iterable[int]) -> None:
    for p in pages:
        dma_write(dev, base + p * PAGE + 8)


def sim_only(kernel: Kernel) -> None:
    if getattr(kernel, "machine", None) is None:
        pytest.skip("needs simulated devices with dirty tracking (the VM's IOMMUs have none)")


@contextmanager
def dirty_edu(kernel: Kernel) -> Iterator[tuple[AddressSpace, VFIODevice]]:
    """A simulated edu behind VT-d with dirty tracking, attached to a new AddressSpace
    through iommufd, its IOAS mapping with 4 KiB IOPTEs (a write dirties one page, not a
    huge IOPTE's worth). The caller adds RAM and enables DMA (skips off the simulator)."""
    sim_only(kernel)
    with AddressSpace() as space, IOMMUFDBackend(kernel=kernel) as be:
        dev = VFIODevice(add_sim_device(kernel, iommu="vtd", dirty=True), kernel=kernel)
        with dev.attach(space, be):
            assert isinstance(dev.container, IommufdContainer)
            dev.container.ioas.huge_pages = False
            yield space, dev


def mock_domains_work(kernel: Kernel) -> bool:
    """The iommufd selftest's mock domain can be created (not under VT-d, for instance)."""
    with IOMMUFDBackend(kernel=kernel) as be, be.ioas() as ioas:
        cmd = uapi.new(uapi.iommu_test_cmd, op=uapi.IOMMU_TEST_OP_MOCK_DOMAIN, id=ioas.id)
        try:
            be.kernel.ioctl(be.fd, uapi.IOMMU_TEST_CMD, cmd)
        except KernelError:
            return False
        be.free_id(int(cmd.u.mock_domain.out_stdev_id))
        return True


@pytest.fixture
def mock_ok(kernel: Kernel) -> None:
    """Skip where the selftest mock domain is unavailable (a kernel without
    CONFIG_IOMMUFD_TEST, or under VT-d). The simulator always has it."""
    if kernel.name != "sim" and not mock_domains_work(kernel):
        missing("selftest", "no iommufd selftest mock domain on this kernel")
