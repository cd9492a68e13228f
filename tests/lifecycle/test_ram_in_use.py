"""Defect 6: a RamBlock still mapped for a device cannot be closed (RamInUseError, nothing
changes); once unmapped it can. Each mapping holds one of the block's leases, inside the
engine, until the unmap that removes it from the kernel."""

from __future__ import annotations

import mmap

import pytest

from fastmap.errors import RamInUseError
from fastmap.ioas import Ioas
from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice
from fastmap.ram import RamBlock
from tests.lifecycle.conftest import add_sim_device

PAGE = mmap.PAGESIZE


def test_close_of_a_mapped_block_is_refused(kernel: Kernel) -> None:
    fd = kernel.open("/dev/iommu")
    try:
        with Ioas.allocate(kernel, fd) as io:
            ram = RamBlock(4 * PAGE, 0x100000)
            io.map(ram.va, ram.length, ram.gpa, keep=ram.lease())
            with pytest.raises(RamInUseError):
                ram.close()
            assert not ram.closed and ram.mapped
            ram.write(0, b"still here")
            io.unmap(ram.gpa, ram.length)
            assert not ram.mapped
            ram.close()
            assert ram.closed
    finally:
        kernel.close(fd)


def test_block_mapped_through_a_container(kernel: Kernel, space: AddressSpace) -> None:
    bdf = add_sim_device(kernel)
    with (
        IOMMUFDBackend(kernel=kernel) as be,
        VFIODevice(bdf, kernel=kernel).attach(space, be),
    ):
        extra = space.add_ram(PAGE, 0x400000)
        with pytest.raises(RamInUseError):
            extra.close()
        assert not extra.closed
        space.remove_ram(extra)  # unmaps from every container, then closes
        assert extra.closed
