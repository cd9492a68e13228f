"""VFIO device cdevs with iommufd: the kernel selftest vfio_iommufd_setup_test cases (VST,
reference §3.3) and the cdev/group exclusion rules of drivers/vfio/device_cdev.c."""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

import pytest

from tests.facilities import only_on_sim

from .raw import (
    EDU_DMA_BUF,
    PAGE,
    Buf,
    Dev,
    IoasFd,
    K,
    attach,
    bind,
    close,
    detach,
    ioctl,
    make,
    track,
)

U32_MAX = (1 << 32) - 1


class Setup:
    def __init__(self, k: Any, info: dict[str, Any]) -> None:
        self.k, self.info = k, info
        self.dev = Dev.open(self.k, self.info["cdev"])
        assert self.dev.fd >= 0
        self.ifd = IoasFd(self.k)


@pytest.fixture()
def s(core: Any, pci: dict[str, Any]) -> Setup:
    return Setup(core, pci)


def test_get_info_without_bind_fails(s: Setup) -> None:
    assert s.dev.info()[0] == -errno.EINVAL
    assert s.dev.region(0)[0] == -errno.EINVAL
    assert attach(s.dev, s.ifd.ioas_id)[0] == -errno.EINVAL
    assert detach(s.dev) == -errno.EINVAL
    assert s.dev.ioctl("VFIO_DEVICE_RESET", None) == -errno.EINVAL
    assert s.k.pread(s.dev.fd, 4, 7 << 40) == -errno.EINVAL
    assert s.k.pwrite(s.dev.fd, b"\0\0", 7 << 40) == -errno.EINVAL


def test_bind_argument_checks(s: Setup) -> None:
    assert bind(s.dev, -2)[0] == -errno.EINVAL  # negative iommufd
    assert bind(s.dev, s.ifd.fd, argsz=15)[0] == -errno.EINVAL
    assert bind(s.dev, s.ifd.fd, flags=1)[0] == -errno.EINVAL  # no TOKEN flag in 6.12
    assert bind(s.dev, 1000)[0] == -errno.EBADF  # not an open fd
    container = track(s.k, s.k.open("/dev/vfio/vfio", os.O_RDWR))
    assert bind(s.dev, container)[0] == -errno.EBADFD  # open, but not an iommufd
    assert bind(s.dev, s.dev.fd)[0] == -errno.EBADFD


def test_bind_then_repeated_bind_fails(s: Setup) -> None:
    rc, devid = bind(s.dev, s.ifd.fd)
    assert rc == 0 and devid > 0
    assert bind(s.dev, s.ifd.fd)[0] == -errno.EINVAL
    rc, info = s.dev.info()
    assert rc == 0 and info.num_regions == 9
    # A second cdev fd of the same device cannot bind while the first is bound.
    other = Dev.open(s.k, s.info["cdev"])
    assert bind(other, s.ifd.fd)[0] == -errno.EINVAL
    assert other.info()[0] == -errno.EINVAL
    # The device id lives in the iommufd's namespace: it is busy while bound.
    assert s.ifd.ioctl("IOMMU_DESTROY", make("iommu_destroy", id=devid)) == -errno.EBUSY


def test_attach_detach(s: Setup) -> None:
    assert bind(s.dev, s.ifd.fd)[0] == 0
    assert detach(s.dev) == 0  # not attached: a no-op
    assert attach(s.dev, U32_MAX)[0] == -errno.ENOENT  # invalid pt id fails
    assert attach(s.dev, s.ifd.ioas_id, argsz=11)[0] == -errno.EINVAL
    assert attach(s.dev, s.ifd.ioas_id, flags=1)[0] == -errno.EINVAL
    assert detach(s.dev, argsz=7) == -errno.EINVAL
    assert detach(s.dev, flags=1) == -errno.EINVAL
    rc, hwpt = attach(s.dev, s.ifd.ioas_id)
    assert rc == 0 and hwpt != s.ifd.ioas_id
    rc, again = attach(s.dev, s.ifd.ioas_id)  # replace: same auto HWPT
    assert rc == 0 and again == hwpt
    assert detach(s.dev) == 0
    assert detach(s.dev) == 0
    # The auto HWPT went away with its last device; the IOAS can be destroyed.
    assert s.ifd.ioctl("IOMMU_DESTROY", make("iommu_destroy", id=hwpt)) == -errno.ENOENT
    assert s.ifd.ioctl("IOMMU_DESTROY", make("iommu_destroy", id=s.ifd.ioas_id)) == 0


@only_on_sim  # reads the simulated machine's DMA fault log
def test_dma_blocked_after_detach_and_close(s: Setup) -> None:
    buf = Buf(PAGE)
    try:
        assert bind(s.dev, s.ifd.fd)[0] == 0
        assert attach(s.dev, s.ifd.ioas_id)[0] == 0
        assert s.ifd.map_fixed(buf.addr, PAGE, 0x100000) == 0
        s.dev.enable()
        buf.write(b"\x5a" * PAGE)
        s.dev.dma(EDU_DMA_BUF, 0x100000, PAGE, to_ram=True)
        assert buf.read(PAGE) == bytes(PAGE)  # the device wrote its buffer
        buf.write(b"\x5a" * PAGE)
        assert detach(s.dev) == 0
        s.dev.dma(EDU_DMA_BUF, 0x100000, PAGE, to_ram=True)
        assert buf.read(PAGE) == b"\x5a" * PAGE
        faults = s.k.machine.dma_faults(s.info["bdf"])
        assert [-f["error"] for f in faults] == [errno.EFAULT]
    finally:
        buf.free()


def test_close_unbinds(s: Setup) -> None:
    rc, devid = bind(s.dev, s.ifd.fd)
    assert rc == 0
    assert attach(s.dev, s.ifd.ioas_id)[0] == 0
    assert s.ifd.ioctl("IOMMU_DESTROY", make("iommu_destroy", id=s.ifd.ioas_id)) == -errno.EBUSY
    assert s.dev.close() == 0
    assert s.ifd.ioctl("IOMMU_DESTROY", make("iommu_destroy", id=devid)) == -errno.ENOENT
    assert s.ifd.ioctl("IOMMU_DESTROY", make("iommu_destroy", id=s.ifd.ioas_id)) == 0
    # The device can be bound again through a new fd.
    dev2 = Dev.open(s.k, s.info["cdev"])
    assert bind(dev2, s.ifd.fd)[0] == 0


@only_on_sim  # the simulated device sits behind the VT-d model
def test_hw_info_through_bound_device(s: Setup) -> None:
    rc, devid = bind(s.dev, s.ifd.fd)
    assert rc == 0
    data = (ctypes.c_uint8 * 64)()
    hw = make("iommu_hw_info", dev_id=devid, data_len=64, data_uptr=ctypes.addressof(data))
    assert s.ifd.ioctl("IOMMU_GET_HW_INFO", hw) == 0
    assert hw.out_data_type == K["IOMMU_HW_INFO_TYPE_INTEL_VTD"]
    assert hw.data_len == 24
    assert hw.out_capabilities & K["IOMMU_HW_CAP_DIRTY_TRACKING"] == 0


def test_cdev_and_group_exclude_each_other(s: Setup) -> None:
    group = s.info["group_path"]
    gfd = track(s.k, s.k.open(group, os.O_RDWR))
    assert gfd >= 0
    assert bind(s.dev, s.ifd.fd)[0] == -errno.EBUSY  # the group is open
    assert close(s.k, gfd) == 0
    assert bind(s.dev, s.ifd.fd)[0] == 0
    assert s.k.open(group, os.O_RDWR) == -errno.EBUSY  # a device is bound
    assert s.dev.close() == 0
    gfd = track(s.k, s.k.open(group, os.O_RDWR))
    assert gfd >= 0
    status = make("vfio_group_status")
    assert ioctl(s.k, gfd, "VFIO_GROUP_GET_STATUS", status) == 0
    assert status.flags == K["VFIO_GROUP_FLAGS_VIABLE"]


def test_group_device_fd_refuses_cdev_ioctls(core: Any, pci: dict[str, Any]) -> None:
    k, info = core, pci
    cfd = track(k, k.open("/dev/vfio/vfio", os.O_RDWR))
    gfd = track(k, k.open(info["group_path"], os.O_RDWR))
    assert ioctl(k, gfd, "VFIO_GROUP_SET_CONTAINER", ctypes.c_int(cfd)) == 0
    assert ioctl(k, cfd, "VFIO_SET_IOMMU", K["VFIO_TYPE1v2_IOMMU"]) == 0
    name = ctypes.create_string_buffer(info["bdf"].encode())
    fd = ioctl(k, gfd, "VFIO_GROUP_GET_DEVICE_FD", name)
    assert fd >= 0
    dev = Dev(k, fd)
    ifd = IoasFd(k)
    assert bind(dev, ifd.fd)[0] == -errno.EINVAL  # BIND is for cdev fds only
    assert attach(dev, ifd.ioas_id)[0] == -errno.ENOTTY  # vfio-pci does not know it
    assert dev.info()[0] == 0
    # While the group path has the device, its cdev cannot bind.
    cdev = Dev.open(k, info["cdev"])
    assert bind(cdev, ifd.fd)[0] == -errno.EBUSY
