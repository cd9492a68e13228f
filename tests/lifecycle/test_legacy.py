"""Attaching devices the legacy way: IOMMU groups, Type1 containers, detach order."""

from __future__ import annotations

import mmap

import pytest

from fastmap import uapi
from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice
from fastmap.lifecycle.vfio_legacy import LegacyContainer, open_groups
from tests.facilities import only_on_sim
from tests.lifecycle.conftest import RAM_GPA, add_sim_device
from tests.lifecycle.faulty import FaultyKernel
from tests.lifecycle.test_iommufd import roundtrip

PAGE = mmap.PAGESIZE


def test_attach_maps_guest_ram_and_dma_works(
    fk: FaultyKernel, edu: str, space: AddressSpace
) -> None:
    with VFIODevice(edu, kernel=fk).attach(space, "legacy") as dev:
        c = dev.container
        assert isinstance(c, LegacyContainer) and c.initialized
        assert c.iommu_type == uapi.VFIO_TYPE1v2_IOMMU
        assert space.containers == [c] and c.devices == [dev]
        assert dev.group is not None and c.groups == [dev.group]
        assert open_groups(fk) == [dev.group]
        assert dev.hiod is not None and dev.hiod.backend == "legacy"
        assert dev.hiod.aw_bits == c.aw_bits and dev.hiod.iova_ranges == c.iova_ranges
        assert c.pgsizes & PAGE and c.dma_max_mappings > 0
        assert c.iova_ranges and c.iova_ranges[0].start == 0
        maps = [e for e in fk.log if e.startswith("VFIO_IOMMU_MAP_DMA")]
        assert len(maps) == 1
        dev.enable_dma()
        assert roundtrip(dev, space, RAM_GPA, RAM_GPA + (1 << 20))
        extra = space.add_ram(PAGE, 0x400000)
        assert roundtrip(dev, space, 0x400000, RAM_GPA)
        space.remove_ram(extra)
    assert fk.open_fds == set() and open_groups(fk) == [] and space.containers == []


def test_legacy_detach_order(fk: FaultyKernel, edu: str, space: AddressSpace) -> None:
    """Device fd closed -> (last device of the group) listener unmaps all RAM ->
    UNSET_CONTAINER -> container closed -> group closed (QEMU's vfio_legacy_detach_device)."""
    dev = VFIODevice(edu, kernel=fk).attach(space, "legacy")
    assert dev.fd is not None and dev.group is not None
    c = dev.container
    assert isinstance(c, LegacyContainer)
    dev_fd, group_fd, container_fd = dev.fd.number, dev.group.fd.number, c.fd.number
    start = len(fk.log)
    dev.detach()
    assert fk.log[start:] == [
        f"close {dev_fd}",
        f"VFIO_IOMMU_UNMAP_DMA fd {container_fd}",
        f"VFIO_GROUP_UNSET_CONTAINER fd {group_fd}",
        f"close {container_fd}",
        f"close {group_fd}",
    ]


@only_on_sim
def test_two_devices_in_one_group(fk: FaultyKernel, space: AddressSpace) -> None:
    a = add_sim_device(fk, group=5)
    b = add_sim_device(fk, group=5)
    da = VFIODevice(a, kernel=fk).attach(space, "legacy")
    db = VFIODevice(b, kernel=fk).attach(space, "legacy")
    assert da.group is db.group and da.container is db.container
    assert da.group is not None and da.group.devices == [db, da]
    assert sum(e.startswith("open /dev/vfio/5 ") for e in fk.log) == 1
    for d in (da, db):
        d.enable_dma()
        assert roundtrip(d, space, RAM_GPA, RAM_GPA + PAGE)
    with pytest.raises(ValueError, match="already attached"):
        VFIODevice(a, kernel=fk).attach(space, "legacy")
    assert db.fd is not None
    start, fd = len(fk.log), db.fd.number
    db.detach()  # the group stays open for the other device
    assert fk.log[start:] == [f"close {fd}"]
    da.detach()
    assert fk.open_fds == set() and open_groups(fk) == []


def test_two_groups_share_one_container(
    fk: FaultyKernel, two_edus: tuple[str, str], space: AddressSpace
) -> None:
    a, b = two_edus
    da = VFIODevice(a, kernel=fk).attach(space, "legacy")
    db = VFIODevice(b, kernel=fk).attach(space, "legacy")
    c = da.container
    assert isinstance(c, LegacyContainer) and db.container is c
    assert da.group is not db.group and c.groups == [db.group, da.group]
    assert sum(e.startswith("open /dev/vfio/vfio ") for e in fk.log) == 1
    da.detach()  # container stays for the other group: no unmap
    assert space.containers == [c] and not any("UNMAP" in e for e in fk.log)
    db.enable_dma()
    assert roundtrip(db, space, RAM_GPA, RAM_GPA + PAGE)
    db.detach()
    assert fk.open_fds == set() and space.containers == []


@only_on_sim
def test_group_in_two_address_spaces_is_refused(kernel: Kernel) -> None:
    a = add_sim_device(kernel, group=9)
    b = add_sim_device(kernel, group=9)
    with (
        AddressSpace() as s1,
        AddressSpace() as s2,
        VFIODevice(a, kernel=kernel).attach(s1, "legacy"),
    ):
        dev = VFIODevice(b, kernel=kernel)
        with pytest.raises(ValueError, match="another address space"):
            dev.attach(s2, "legacy")
        assert s2.containers == [] and dev.fd is None


def test_address_spaces_get_their_own_containers(kernel: Kernel, two_edus: tuple[str, str]) -> None:
    a, b = two_edus
    with AddressSpace() as s1, AddressSpace() as s2:
        s1.add_ram(PAGE, RAM_GPA)
        s2.add_ram(PAGE, RAM_GPA)
        with (
            VFIODevice(a, kernel=kernel).attach(s1, "legacy") as da,
            VFIODevice(b, kernel=kernel).attach(s2, "legacy") as db,
        ):
            assert da.container is not db.container
            assert s1.containers == [da.container] and s2.containers == [db.container]


def test_legacy_and_iommufd_devices_in_one_space(
    kernel: Kernel, two_edus: tuple[str, str], space: AddressSpace, hwpt_alloc: bool
) -> None:
    """Containers of both kinds serve one address space; each follows its RAM."""
    a, b = two_edus
    with (
        IOMMUFDBackend(kernel=kernel) as be,
        VFIODevice(a, kernel=kernel).attach(space, be, hwpt_alloc=hwpt_alloc) as da,
        VFIODevice(b, kernel=kernel).attach(space, "legacy") as db,
    ):
        assert type(da.container).__name__ == "IommufdContainer"
        assert isinstance(db.container, LegacyContainer)
        extra = space.add_ram(PAGE, 0x400000)
        for d in (da, db):
            d.enable_dma()
            assert roundtrip(d, space, 0x400000, RAM_GPA)
        space.remove_ram(extra)


def test_address_space_close_refuses_while_attached(kernel: Kernel, edu: str) -> None:
    space = AddressSpace()
    space.add_ram(PAGE, RAM_GPA)
    dev = VFIODevice(edu, kernel=kernel).attach(space, "legacy")
    with pytest.raises(RuntimeError, match="detach"):
        space.close()
    dev.detach()
    space.close()
    assert space.blocks == []


def test_both_paths_see_the_same_iova_ranges(
    kernel: Kernel, edu: str, space: AddressSpace, hwpt_alloc: bool
) -> None:
    """Type1's IOVA-range capability and iommufd's IOAS_IOVA_RANGES describe the same
    IOMMU: each path checks the other's parsing."""
    dev = VFIODevice(sysfsdev=f"/sys/bus/pci/devices/{edu}", kernel=kernel)
    with dev.attach(space, "legacy") as d:
        assert d.name == edu and d.container is not None
        legacy = d.container.iova_ranges
    with (
        IOMMUFDBackend(kernel=kernel) as be,
        VFIODevice(edu, kernel=kernel).attach(space, be, hwpt_alloc=hwpt_alloc) as d,
    ):
        assert d.container is not None
        assert d.container.iova_ranges == legacy
        assert d.hiod is not None and d.hiod.aw_bits == max(r.last for r in legacy).bit_length()


def test_dma_avail_comes_from_the_kernel(space: AddressSpace) -> None:
    """The DMA_AVAIL capability is the Type1 entry limit (the simulator's knob)."""
    from fastmap.sim import SimKernel

    kernel = SimKernel(dma_entry_limit=1234)
    bdf = add_sim_device(kernel)
    with VFIODevice(bdf, kernel=kernel).attach(space, "legacy") as dev:
        assert isinstance(dev.container, LegacyContainer)
        assert dev.container.dma_max_mappings == 1234
