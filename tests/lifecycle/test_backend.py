"""IOMMUFDBackend: reference-counted connection, kernel choice, errors, QEMU's thin calls."""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os

import numpy as np
import pytest

from fastmap import uapi
from fastmap.errors import KernelError, NotFoundError
from fastmap.kernel import Fd, Kernel
from fastmap.lifecycle.backend import IOMMUFDBackend, IommufdUnavailableError
from fastmap.lifecycle.sysfs import sysfs_for
from fastmap.lifecycle.vfio_iommufd import bind, open_cdev
from fastmap.prot import Prot
from fastmap.ram import RamBlock
from tests.facilities import only_on_sim
from tests.lifecycle.faulty import FaultyKernel, destroy_sweep

PAGE = mmap.PAGESIZE


def test_connect_is_reference_counted(fk: FaultyKernel) -> None:
    be = IOMMUFDBackend(kernel=fk)
    assert not be.connected and be.can_be_deleted
    be.connect()
    fd = be.fd
    assert fk.open_fds == {fd}
    be.connect()
    assert be.users == 2 and fk.log.count(f"open /dev/iommu = {fd}") == 1
    be.disconnect()
    assert be.connected and fk.open_fds == {fd}
    be.disconnect()
    assert not be.connected and be.can_be_deleted and fk.open_fds == set()
    be.disconnect()  # one too many: nothing happens (QEMU does the same)
    assert be.users == 0
    with pytest.raises(RuntimeError, match="connect"):
        _ = be.fd


def test_context_manager_connects(fk: FaultyKernel) -> None:
    with IOMMUFDBackend(kernel=fk) as be:
        assert be.users == 1 and fk.open_fds == {be.fd}
    assert fk.open_fds == set()


def test_preopened_fd_is_never_closed(kernel: Kernel) -> None:
    fd = kernel.open("/dev/iommu")
    try:
        be = IOMMUFDBackend(fd, kernel=kernel)
        assert not be.owned and be.fd == fd
        with be, be.ioas() as ioas:
            assert ioas.iommufd == fd
        assert be.users == 0 and be.fd == fd
        # Still open and usable after the last disconnect.
        with IOMMUFDBackend(fd, kernel=kernel) as be2, be2.ioas():
            pass
    finally:
        kernel.close(fd)


@pytest.mark.parametrize(
    ("err", "words"),
    [
        (errno.ENOENT, ["CONFIG_IOMMUFD", "modprobe iommufd", "kernel='sim'"]),
        (errno.EACCES, ["permission", "udev"]),
        (errno.EPERM, ["permission", "root"]),
        (errno.ENODEV, ["modprobe iommufd"]),
        (errno.EMFILE, ["ulimit -n"]),
    ],
)
def test_open_failure_says_why_and_how_to_fix(fk: FaultyKernel, err: int, words: list[str]) -> None:
    fk.fail("open(/dev/iommu)", err)
    be = IOMMUFDBackend(kernel=fk)
    with pytest.raises(IommufdUnavailableError) as info:
        be.connect()
    assert info.value.errno == err
    for w in words:
        assert w in str(info.value)
    assert be.users == 0 and not be.connected and fk.open_fds == set()


def test_missing_node_is_enoent_on_the_kernel_itself(kernel: Kernel) -> None:
    be = IOMMUFDBackend(kernel=kernel, path="/dev/iommu-does-not-exist")
    with pytest.raises(IommufdUnavailableError, match="modprobe iommufd") as info:
        be.connect()
    assert info.value.errno == errno.ENOENT


def test_kernel_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert IOMMUFDBackend(kernel="sim").kernel.name == "sim"
    monkeypatch.setenv("FASTMAP_KERNEL", "sim")
    assert IOMMUFDBackend().kernel.name == "sim"
    monkeypatch.delenv("FASTMAP_KERNEL")
    expected = "real" if os.path.exists("/dev/iommu") else "sim"
    assert IOMMUFDBackend().kernel.name == expected
    monkeypatch.setenv("FASTMAP_KERNEL", "bogus")
    with pytest.raises(ValueError, match="FASTMAP_KERNEL"):
        IOMMUFDBackend()


def test_ioas_helper_destroys_the_ioas(kernel: Kernel) -> None:
    fd = kernel.open("/dev/iommu")
    try:
        be = IOMMUFDBackend(fd, kernel=kernel)
        with be.ioas() as ioas:
            ioas_id = ioas.id
            assert be.users == 1
        assert be.users == 0
        with pytest.raises(NotFoundError):
            kernel.ioctl(fd, uapi.IOMMU_DESTROY, uapi.new(uapi.iommu_destroy, id=ioas_id))
    finally:
        kernel.close(fd)


def test_alloc_ioas_needs_a_connection(kernel: Kernel) -> None:
    with pytest.raises(RuntimeError, match="not connected"):
        IOMMUFDBackend(kernel=kernel).alloc_ioas()


def test_free_id_only_logs(kernel: Kernel, caplog: pytest.LogCaptureFixture) -> None:
    with IOMMUFDBackend(kernel=kernel) as be:
        ioas = be.alloc_ioas()
        assert be.free_id(ioas.id)
        with caplog.at_level(logging.ERROR, logger="fastmap.backend"):
            assert not be.free_id(ioas.id)
        assert "ENOENT" in caplog.text


def test_map_and_unmap_dma(kernel: Kernel) -> None:
    with IOMMUFDBackend(kernel=kernel) as be, be.ioas() as ioas, RamBlock(4 * PAGE, 0) as ram:
        be.map_dma(ioas.id, ram.va, 2 * PAGE, 0x100000)
        be.map_dma(ioas.id, ram.va, PAGE, 0x200000, prot=Prot.READ)
        with pytest.raises(KernelError) as info:  # fixed IOVA already used
            be.map_dma(ioas.id, ram.va, PAGE, 0x100000)
        assert info.value.errno == errno.EEXIST
        assert be.unmap_dma(ioas.id, 0x100000, 2 * PAGE) == 2 * PAGE
        # ENOENT (nothing mapped) is success by default, as in QEMU...
        assert be.unmap_dma(ioas.id, 0x100000, 2 * PAGE) == 0
        # ...and an error when asked, per call or per backend.
        with pytest.raises(NotFoundError):
            be.unmap_dma(ioas.id, 0x100000, 2 * PAGE, enoent_ok=False)
        be.unmap_enoent_ok = False
        with pytest.raises(NotFoundError):
            be.unmap_dma(ioas.id, 0x100000, 2 * PAGE)
        assert be.unmap_dma(ioas.id, 0x200000, PAGE) == PAGE


def _bound_device(kernel: Kernel, be: IOMMUFDBackend, bdf: str) -> tuple[Fd, int]:
    fd = open_cdev(kernel, sysfs_for(kernel), f"/sys/bus/pci/devices/{bdf}")
    return fd, bind(fd, be)


def test_get_device_info_and_hwpt(kernel: Kernel, edu: str) -> None:
    fd = kernel.open("/dev/iommu")
    try:
        be = IOMMUFDBackend(fd, kernel=kernel)
        with be:
            dev_fd = open_cdev(kernel, sysfs_for(kernel), f"/sys/bus/pci/devices/{edu}")
            with dev_fd:
                dev_id = bind(dev_fd, be)
                info = be.get_device_info(dev_id)
                assert info.type in (
                    uapi.IOMMU_HW_INFO_TYPE_NONE,
                    uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD,
                )
                if info.type == uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD:
                    assert len(info.data) == ctypes.sizeof(uapi.iommu_hw_info_vtd)
                else:
                    assert info.data == b""
                with be.ioas() as ioas:
                    flags = uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                    if info.dirty_tracking:
                        hwpt = be.alloc_hwpt(dev_id, ioas.id, flags)
                        be.set_dirty_tracking(hwpt, True)
                        bitmap = be.get_dirty_bitmap(hwpt, 0, 64 * PAGE, PAGE)
                        assert bitmap.dtype == np.uint64 and not bitmap.any()
                        be.set_dirty_tracking(hwpt, False)
                        be.free_id(hwpt)
                    else:
                        with pytest.raises(KernelError) as e:
                            be.alloc_hwpt(dev_id, ioas.id, flags)
                        assert e.value.errno == errno.EOPNOTSUPP
                    hwpt = be.alloc_hwpt(dev_id, ioas.id)
                    assert be.free_id(hwpt)
        assert destroy_sweep(kernel, fd) == {}
    finally:
        kernel.close(fd)


@only_on_sim
def test_dirty_bitmap_on_a_dirty_capable_sim_device(kernel: Kernel) -> None:
    machine = getattr(kernel, "machine", None)
    if machine is None:
        pytest.skip("the VM's IOMMUs have no dirty tracking (the sim's VT-d model can)")
    bdf = machine.add_pci_device(iommu="vtd", dirty=True)["bdf"]
    with IOMMUFDBackend(kernel=kernel) as be:
        dev_fd, dev_id = _bound_device(kernel, be, bdf)
        with dev_fd:
            info = be.get_device_info(dev_id)
            assert info.dirty_tracking
            with be.ioas() as ioas:
                hwpt = be.alloc_hwpt(dev_id, ioas.id, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
                mine = np.zeros(1, np.uint64)
                mine[0] = 1 << 63  # bits already set stay set: the kernel only ORs
                out = be.get_dirty_bitmap(hwpt, 0, 4 * PAGE, PAGE, mine)
                assert out is mine and int(mine[0]) == 1 << 63
                with pytest.raises(ValueError, match="uint64"):
                    be.get_dirty_bitmap(hwpt, 0, 4 * PAGE, PAGE, np.zeros(1, np.uint32))
                be.free_id(hwpt)
