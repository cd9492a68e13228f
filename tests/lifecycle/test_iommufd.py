"""Attaching devices through IOMMUFD: containers, auto domains, RAM following, detach order."""

from __future__ import annotations

import errno
import mmap
import os

import pytest

from fastmap import uapi
from fastmap.errors import (
    DeviceNotFoundError,
    DirtyTrackingWarning,
    IovaRangesFallbackWarning,
    KernelError,
)
from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice, find_pci_devices
from fastmap.lifecycle.sysfs import sysfs_for
from fastmap.lifecycle.vfio_iommufd import IommufdContainer
from fastmap.prot import Prot
from fastmap.ram import default_hugepage_size, free_hugepages
from tests.facilities import missing, only_on_sim
from tests.hugepages import HugePages
from tests.lifecycle.conftest import MOCK_RAM_GPA, RAM_GPA, add_sim_device, load_example
from tests.lifecycle.faulty import FaultyKernel

PAGE = mmap.PAGESIZE
EDU_BUFFER = 0x40000


def roundtrip(dev: VFIODevice, space: AddressSpace, src: int, dst: int, n: int = 256) -> bool:
    """Copy n random bytes guest src -> edu -> guest dst; whether they arrived."""
    edu = load_example().Edu(dev, timeout=10.0)
    data = os.urandom(n)
    space.write(src, data)
    space.write(dst, bytes(n))
    edu.dma(src, EDU_BUFFER, n, to_ram=False)
    edu.dma(EDU_BUFFER, dst, n, to_ram=True)
    return space.read(dst, n) == data


def test_attach_maps_guest_ram_and_dma_works(
    fk: FaultyKernel, edu: str, space: AddressSpace, hwpt_alloc: bool
) -> None:
    with IOMMUFDBackend(kernel=fk) as be:
        with VFIODevice(edu, kernel=fk).attach(space, be, hwpt_alloc=hwpt_alloc) as dev:
            c = dev.container
            assert isinstance(c, IommufdContainer) and c.initialized
            assert space.containers == [c] and c.devices == [dev]
            assert dev.dev_id is not None and dev.hwpt is not None and c.hwpts == [dev.hwpt]
            assert dev.num_regions == uapi.VFIO_PCI_NUM_REGIONS and dev.num_irqs > 0
            seg = c.ioas.segments()
            assert [(s.iova, s.length) for s in seg] == [(RAM_GPA, 2 << 20)]
            assert seg[0].va == space.blocks[0].va
            # IOVA ranges: what the kernel says; pgsizes = its IOVA alignment.
            assert c.iova_ranges and all(r.start <= r.last for r in c.iova_ranges)
            assert c.pgsizes == PAGE
            dev.enable_dma()
            assert roundtrip(dev, space, RAM_GPA, RAM_GPA + (1 << 20))
            assert be.users == 2
        assert be.users == 1 and space.containers == []
    assert fk.open_fds == set()


def test_ram_added_and_removed_while_attached(
    kernel: Kernel, edu: str, space: AddressSpace, hwpt_alloc: bool
) -> None:
    with (
        IOMMUFDBackend(kernel=kernel) as be,
        VFIODevice(edu, kernel=kernel).attach(space, be, hwpt_alloc=hwpt_alloc) as dev,
    ):
        c = dev.container
        assert isinstance(c, IommufdContainer)
        extra = space.add_ram(1 << 20, 0x400000, "memfd")
        assert [(s.iova, s.length) for s in c.ioas.segments()] == [
            (RAM_GPA, 2 << 20),
            (0x400000, 1 << 20),
        ]
        dev.enable_dma()
        assert roundtrip(dev, space, 0x400000, RAM_GPA)
        ro = space.add_ram(PAGE, 0x600000, prot=Prot.READ)
        assert [s.prot for s in c.ioas.segments() if s.iova == 0x600000] == [
            uapi.IOMMU_IOAS_MAP_READABLE
        ]
        space.remove_ram(ro)
        space.remove_ram(extra)
        assert [(s.iova, s.length) for s in c.ioas.segments()] == [(RAM_GPA, 2 << 20)]


@only_on_sim
def test_sim_dma_after_ram_removal_faults(kernel: Kernel, space: AddressSpace) -> None:
    bdf = add_sim_device(kernel)
    with (
        IOMMUFDBackend(kernel=kernel) as be,
        VFIODevice(bdf, kernel=kernel).attach(space, be) as dev,
    ):
        extra = space.add_ram(PAGE, 0x400000)
        dev.enable_dma()
        assert roundtrip(dev, space, RAM_GPA, 0x400000)
        space.remove_ram(extra)
        edu = load_example().Edu(dev, timeout=1.0)
        edu.dma(EDU_BUFFER, 0x400000, 64, to_ram=True)
        faults = kernel.machine.dma_faults(bdf, clear=True)  # type: ignore[attr-defined]
        assert [(f["addr"], f["write"]) for f in faults] == [(0x400000, True)]


def test_host_iommu_device(kernel: Kernel, edu: str, space: AddressSpace, hwpt_alloc: bool) -> None:
    with IOMMUFDBackend(kernel=kernel) as be:
        dev = VFIODevice(edu, kernel=kernel).attach(space, be, hwpt_alloc=hwpt_alloc)
        with dev:
            h = dev.hiod
            assert h is not None and h.backend == "iommufd" and h.name == edu
            c = dev.container
            assert c is not None
            if h.type == uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD:
                assert h.type_name == "intel-vtd"
                assert h.vtd_cap_reg is not None
                # MGAW and the aperture agree (QEMU's VT-d: 48 bits, sim: same)
                assert h.aw_bits == c.aw_bits
            else:
                assert h.vtd_cap_reg is None
                assert h.aw_bits == max(r.last for r in c.iova_ranges).bit_length()
            assert h.iova_ranges == c.iova_ranges
            assert h.page_size_mask == c.pgsizes
        assert dev.hiod is None


@only_on_sim
@pytest.mark.parametrize(("dirty", "aw"), [(False, 48), (True, 48)])
def test_sim_vtd_hiod(kernel: Kernel, space: AddressSpace, dirty: bool, aw: int) -> None:
    bdf = add_sim_device(kernel, iommu="vtd", dirty=dirty)
    with (
        IOMMUFDBackend(kernel=kernel) as be,
        VFIODevice(bdf, kernel=kernel).attach(space, be) as dev,
    ):
        assert dev.hiod is not None
        assert dev.hiod.type_name == "intel-vtd" and dev.hiod.aw_bits == aw
        assert dev.hiod.dirty_tracking is dirty
        assert dev.hwpt is not None and dev.hwpt.dirty_tracking is dirty
        assert dev.container is not None and dev.container.dirty_pages_supported is dirty


def test_two_devices_share_container_and_hwpt(
    fk: FaultyKernel, two_edus: tuple[str, str], space: AddressSpace, hwpt_alloc: bool
) -> None:
    a, b = two_edus
    with IOMMUFDBackend(kernel=fk) as be:
        da = VFIODevice(a, kernel=fk).attach(space, be, hwpt_alloc=hwpt_alloc)
        db = VFIODevice(b, kernel=fk).attach(space, be, hwpt_alloc=hwpt_alloc)
        c = da.container
        assert isinstance(c, IommufdContainer)
        assert db.container is c and space.containers == [c]
        assert c.devices == [db, da]
        assert da.hwpt is db.hwpt and c.hwpts == [da.hwpt]
        assert da.hwpt is not None and da.hwpt.devices == [db, da]
        # Only one IOAS and (at most) one HWPT were allocated.
        assert sum(e.startswith("IOMMU_IOAS_ALLOC") for e in fk.log) == 1
        assert sum(e.startswith("IOMMU_HWPT_ALLOC") for e in fk.log) == int(hwpt_alloc)
        for d in (da, db):
            d.enable_dma()
            assert roundtrip(d, space, RAM_GPA, RAM_GPA + PAGE)

        start = len(fk.log)
        assert da.fd is not None
        fd = da.fd.number
        da.detach()  # the other device keeps HWPT and IOAS
        assert fk.log[start:] == [f"VFIO_DEVICE_DETACH_IOMMUFD_PT fd {fd}", f"close {fd}"]
        assert c.devices == [db] and c.hwpts[0].devices == [db] and space.containers == [c]
        assert roundtrip(db, space, RAM_GPA, RAM_GPA + PAGE)
        db.detach()
        assert space.containers == [] and be.users == 1
    assert fk.open_fds == set()


@only_on_sim
def test_dirty_and_non_dirty_devices_get_different_hwpts(
    fk: FaultyKernel, space: AddressSpace
) -> None:
    dirty = add_sim_device(fk, iommu="vtd", dirty=True)
    plain = add_sim_device(fk, iommu="vtd", dirty=False)
    with IOMMUFDBackend(kernel=fk) as be:
        dd = VFIODevice(dirty, kernel=fk).attach(space, be)
        # The dirty HWPT refuses a device without dirty tracking (EINVAL): a second HWPT
        # in the same container, and QEMU's warning.
        with pytest.warns(DirtyTrackingWarning, match=plain):
            dp = VFIODevice(plain, kernel=fk).attach(space, be)
        c = dd.container
        assert isinstance(c, IommufdContainer) and dp.container is c
        assert dd.hwpt is not dp.hwpt and c.hwpts == [dp.hwpt, dd.hwpt]
        assert dd.hwpt is not None and dd.hwpt.dirty_tracking
        assert dp.hwpt is not None and not dp.hwpt.dirty_tracking
        assert dd.iommu_dirty_tracking and not dp.iommu_dirty_tracking
        assert c.dirty_pages_supported
        attaches = [e for e in fk.log if e.startswith("VFIO_DEVICE_ATTACH_IOMMUFD_PT")]
        assert "INJECTED" not in " ".join(attaches) and len(attaches) == 3  # a, b tried, b
        for d in (dp, dd):
            d.enable_dma()
            assert roundtrip(d, space, RAM_GPA, RAM_GPA + PAGE)
        dp.detach()  # its HWPT goes with it, the container stays
        assert c.hwpts == [dd.hwpt] and space.containers == [c]
        dd.detach()
    assert fk.open_fds == set()


@only_on_sim
def test_non_dirty_first_then_dirty_shares_the_plain_hwpt(
    kernel: Kernel, space: AddressSpace
) -> None:
    plain = add_sim_device(kernel, iommu="vtd", dirty=False)
    dirty = add_sim_device(kernel, iommu="vtd", dirty=True)
    with (
        IOMMUFDBackend(kernel=kernel) as be,
        VFIODevice(plain, kernel=kernel).attach(space, be) as dp,
        VFIODevice(dirty, kernel=kernel).attach(space, be) as dd,
    ):
        # A plain domain suits a dirty-capable IOMMU too: reused, no dirty tracking.
        assert dd.hwpt is dp.hwpt and not dd.iommu_dirty_tracking
        assert dd.container is not None and not dd.container.dirty_pages_supported


@only_on_sim
def test_mock_iommu_device_needs_its_own_domain(fk: FaultyKernel) -> None:
    vtd = add_sim_device(fk, iommu="vtd")
    mock = add_sim_device(fk, iommu="mock", dirty=False)
    with AddressSpace() as space, IOMMUFDBackend(kernel=fk) as be:
        space.add_ram(1 << 20, MOCK_RAM_GPA)  # inside both apertures
        dv = VFIODevice(vtd, kernel=fk).attach(space, be)
        dm = VFIODevice(mock, kernel=fk).attach(space, be)
        assert dv.container is dm.container and dv.hwpt is not dm.hwpt
        assert dm.hiod is not None and dm.hiod.type_name == "selftest"
        c = dm.container
        assert isinstance(c, IommufdContainer) and len(c.hwpts) == 2
        for d in (dv, dm):
            d.enable_dma()
            assert roundtrip(d, space, MOCK_RAM_GPA, MOCK_RAM_GPA + PAGE)
        dm.detach()
        dv.detach()
    assert fk.open_fds == set()


@only_on_sim
def test_mock_device_cannot_join_a_container_mapping_outside_its_aperture(
    kernel: Kernel, space: AddressSpace
) -> None:
    """RAM at 1 MiB is outside the mock IOMMU's aperture: joining the existing container
    fails, and a new container cannot map that RAM either: the attach fails cleanly."""
    vtd = add_sim_device(kernel, iommu="vtd")
    mock = add_sim_device(kernel, iommu="mock")
    with (
        IOMMUFDBackend(kernel=kernel) as be,
        VFIODevice(vtd, kernel=kernel).attach(space, be) as dv,
    ):
        dm = VFIODevice(mock, kernel=kernel)
        with pytest.raises(KernelError):
            dm.attach(space, be)
        assert space.containers == [dv.container] and not dm.attached
        assert dm.fd is None and be.users == 2


def test_devices_on_different_backends_get_different_containers(
    kernel: Kernel, two_edus: tuple[str, str], space: AddressSpace, hwpt_alloc: bool
) -> None:
    a, b = two_edus
    with (
        IOMMUFDBackend(kernel=kernel) as be1,
        IOMMUFDBackend(kernel=kernel) as be2,
        VFIODevice(a, kernel=kernel).attach(space, be1, hwpt_alloc=hwpt_alloc) as da,
        VFIODevice(b, kernel=kernel).attach(space, be2, hwpt_alloc=hwpt_alloc) as db,
    ):
        assert da.container is not db.container
        assert space.containers == [db.container, da.container]
        assert be1.fd != be2.fd


def test_detach_order(fk: FaultyKernel, edu: str, hwpt_alloc: bool) -> None:
    """DETACH_PT -> HWPT freed -> IOAS unmapped then freed -> iommufd closed -> device fd
    closed (QEMU's iommufd_cdev_detach)."""
    with AddressSpace() as space:
        space.add_ram(1 << 20, RAM_GPA)
        be = IOMMUFDBackend(kernel=fk)
        dev = VFIODevice(edu, kernel=fk).attach(space, be, hwpt_alloc=hwpt_alloc)
        c = dev.container
        assert isinstance(c, IommufdContainer) and dev.fd is not None and dev.hwpt is not None
        dev_fd, iommufd, hwpt, ioas = dev.fd.number, be.fd, dev.hwpt.id, c.ioas.id
        seen_mapped: list[int] = []

        def record_mappings(arg: object, ret: int) -> int:
            seen_mapped.append(len(c.ioas))
            return ret

        fk.override("IOMMU_DESTROY", record_mappings)
        start = len(fk.log)
        dev.detach()
        expected = [f"VFIO_DEVICE_DETACH_IOMMUFD_PT fd {dev_fd}"]
        if hwpt_alloc:
            expected.append(f"IOMMU_DESTROY fd {iommufd} id={hwpt}")
        expected += [f"IOMMU_DESTROY fd {iommufd} id={ioas}", f"close {iommufd}", f"close {dev_fd}"]
        assert fk.log[start:] == expected
        assert seen_mapped[-1] == 0  # the IOAS was empty when destroyed
        assert not be.connected and fk.open_fds == set()
        assert dev.fd is None and dev.dev_id is None and dev.container is None


def test_preopened_device_fd(
    kernel: Kernel, edu: str, space: AddressSpace, hwpt_alloc: bool
) -> None:
    node, _ = sysfs_for(kernel).vfio_cdev(f"/sys/bus/pci/devices/{edu}")
    fd = kernel.open(f"/dev/vfio/devices/{node}")
    with IOMMUFDBackend(kernel=kernel) as be:
        dev = VFIODevice(fd=fd, kernel=kernel)
        assert dev.name == f"VFIO_FD{fd}"
        with dev.attach(space, be, hwpt_alloc=hwpt_alloc):
            assert dev.fd is not None and dev.fd.number == fd
        # The device owns the fd it was given: closed on detach, as QEMU does.
        with pytest.raises(KernelError) as e:
            kernel.close(fd)
        assert e.value.errno == errno.EBADF


def test_preopened_device_fd_is_iommufd_only(kernel: Kernel, space: AddressSpace) -> None:
    with pytest.raises(ValueError, match="IOMMUFDBackend"):
        VFIODevice(fd=99, kernel=kernel).attach(space, "legacy")


def test_unknown_device(kernel: Kernel, space: AddressSpace) -> None:
    with IOMMUFDBackend(kernel=kernel) as be:
        with pytest.raises(DeviceNotFoundError, match="no such PCI device"):
            VFIODevice("0000:7f:1f.7", kernel=kernel).attach(space, be)
        assert be.users == 1


@only_on_sim
def test_kernel_auto_domains(fk: FaultyKernel, space: AddressSpace) -> None:
    """hwpt_alloc=False: ATTACH_PT to the IOAS; the kernel's HWPT is reused by a second
    device and never freed from userspace."""
    a, b = add_sim_device(fk), add_sim_device(fk)
    with IOMMUFDBackend(kernel=fk) as be:
        da = VFIODevice(a, kernel=fk).attach(space, be, hwpt_alloc=False)
        db = VFIODevice(b, kernel=fk).attach(space, be, hwpt_alloc=False)
        assert da.hwpt is db.hwpt and da.hwpt is not None and da.hwpt.auto_domain
        assert not any(e.startswith("IOMMU_HWPT_ALLOC") for e in fk.log)
        hwpt = da.hwpt.id
        da.detach()
        db.detach()
        assert not any(f"id={hwpt}" in e for e in fk.log if e.startswith("IOMMU_DESTROY"))
    assert fk.open_fds == set()


def test_iova_ranges_fallback_warns(
    fk: FaultyKernel, edu: str, space: AddressSpace, hwpt_alloc: bool
) -> None:
    fk.fail("IOMMU_IOAS_IOVA_RANGES", errno.EFAULT)
    with IOMMUFDBackend(kernel=fk) as be:
        with pytest.warns(IovaRangesFallbackWarning, match="full 64-bit"):
            dev = VFIODevice(edu, kernel=fk).attach(space, be, hwpt_alloc=hwpt_alloc)
        with dev:
            c = dev.container
            assert c is not None
            assert [(r.start, r.last) for r in c.iova_ranges] == [(0, (1 << 64) - 1)]
            assert c.pgsizes == PAGE and c.aw_bits == 64


def test_iova_ranges_two_call_protocol(
    fk: FaultyKernel, edu: str, space: AddressSpace, hwpt_alloc: bool
) -> None:
    with (
        IOMMUFDBackend(kernel=fk) as be,
        VFIODevice(edu, kernel=fk).attach(space, be, hwpt_alloc=hwpt_alloc) as dev,
    ):
        calls = [e for e in fk.log if e.startswith("IOMMU_IOAS_IOVA_RANGES")]
        assert len(calls) == 2
        assert dev.container is not None and dev.container.iova_ranges


def test_backend_kernel_must_match(space: AddressSpace) -> None:
    from fastmap.sim import SimKernel

    k1, k2 = SimKernel(), SimKernel()
    bdf = k1.machine.add_pci_device()["bdf"]
    with IOMMUFDBackend(kernel=k2) as be, pytest.raises(ValueError, match="kernel"):
        VFIODevice(bdf, kernel=k1).attach(space, be)


def test_find_pci_devices(kernel: Kernel, edu: str) -> None:
    assert edu in find_pci_devices(kernel, 0x1234, 0x11E8)
    assert find_pci_devices(kernel, 0xDEAD, 0xBEEF) == []
    machine = getattr(kernel, "machine", None)
    if machine is not None:
        machine.add_pci_device(vendor=0x8086, device=0x1234)
        b = machine.add_pci_device(vendor=0x1234, device=0x11E8)["bdf"]
        assert find_pci_devices(kernel, 0x1234, 0x11E8) == [edu, b]
        assert len(find_pci_devices(kernel, 0x8086, 0x1234)) == 1


def test_hugetlb_guest_ram(
    kernel: Kernel, edu: str, hwpt_alloc: bool, host_hugepages: HugePages
) -> None:
    size = default_hugepage_size()
    if free_hugepages(size) < 2:
        missing("hugetlb", f"needs 2 free {size >> 10} KiB huge pages (vm.nr_hugepages)")
    with (
        AddressSpace() as space,
        IOMMUFDBackend(kernel=kernel) as be,
    ):
        space.add_ram(size, size, "hugetlb")
        with VFIODevice(edu, kernel=kernel).attach(space, be, hwpt_alloc=hwpt_alloc) as dev:
            dev.enable_dma()
            assert roundtrip(dev, space, size + PAGE, size + 2 * PAGE)
            extra = space.add_ram(size, 4 * size, "hugetlb")
            assert roundtrip(dev, space, 4 * size, size)
            space.remove_ram(extra)


def test_region_access_and_reset(
    kernel: Kernel, edu: str, space: AddressSpace, hwpt_alloc: bool
) -> None:
    with (
        IOMMUFDBackend(kernel=kernel) as be,
        VFIODevice(edu, kernel=kernel).attach(space, be, hwpt_alloc=hwpt_alloc) as dev,
    ):
        cfg = dev.region_info(uapi.VFIO_PCI_CONFIG_REGION_INDEX)
        assert cfg.readable and cfg.writable and cfg.size >= 256
        assert dev.read_u16(cfg.index, 0) == 0x1234 and dev.read_u16(cfg.index, 2) == 0x11E8
        bar0 = dev.region_info(uapi.VFIO_PCI_BAR0_REGION_INDEX)
        assert bar0.size == 1 << 20
        with pytest.raises(ValueError, match="outside region"):
            dev.read(bar0.index, bar0.size - 2, 4)
        cmd = dev.enable_dma()
        assert cmd & 0x6 == 0x6
        assert dev.read_u32(bar0.index, 0) == 0x010000ED
        if dev.reset_works:
            dev.reset()  # vfio-pci restores config space around the reset
            assert dev.read_u32(bar0.index, 0) == 0x010000ED
            assert roundtrip(dev, space, RAM_GPA, RAM_GPA + PAGE)
    with pytest.raises(RuntimeError, match="not attached"):
        dev.region_info(0)
