"""VFIO device cdev + iommufd setup (tools/testing/selftests/vfio/vfio_iommufd_setup_test).

A device cdev must be bound to an iommufd before anything else works on it; binding is
once per open file; attaching to an IOAS creates (and reports) an automatic HWPT; detaching
works; ids that do not exist are refused. Closing the cdev unbinds.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from fastmap import uapi
from fastmap.kernel import Fd, Kernel

from .helpers import (
    U32_MAX,
    attach_pt,
    bind_iommufd,
    destroy,
    detach_pt,
    device_info,
    ioas_alloc,
    raises_errno,
)


@pytest.fixture
def cdev(kernel: Kernel, vfio_device: str) -> Iterator[Fd]:
    with kernel.open_fd(vfio_device) as fd:
        yield fd


def test_bind(cdev: Fd, iommufd: Fd) -> None:
    devid = bind_iommufd(cdev, iommufd.number)
    assert devid > 0
    info = device_info(cdev)
    assert info.flags & uapi.VFIO_DEVICE_FLAGS_PCI
    assert info.num_regions >= uapi.VFIO_PCI_CONFIG_REGION_INDEX + 1


def test_get_info_without_bind_fails(cdev: Fd) -> None:
    with raises_errno(errno.EINVAL):
        device_info(cdev)


def test_bind_bad_iommufd_fails(cdev: Fd) -> None:
    with raises_errno(errno.EINVAL):  # a negative fd is refused before any lookup
        bind_iommufd(cdev, -2)


def test_bind_not_an_iommufd_fails(cdev: Fd, kernel: Kernel, vfio_device: str) -> None:
    with kernel.open_fd(vfio_device) as other, raises_errno(errno.EBADFD):
        bind_iommufd(cdev, other.number)


def test_repeated_bind_fails(cdev: Fd, iommufd: Fd) -> None:
    bind_iommufd(cdev, iommufd.number)
    with raises_errno(errno.EINVAL):
        bind_iommufd(cdev, iommufd.number)


def test_attach_detach_pt(cdev: Fd, iommufd: Fd) -> None:
    devid = bind_iommufd(cdev, iommufd.number)
    ioas = ioas_alloc(iommufd)
    hwpt = attach_pt(cdev, ioas)
    # An IOAS id gets an automatic HWPT, whose id is written back.
    assert hwpt not in (0, ioas, devid)
    with raises_errno(errno.EBUSY):  # the HWPT (and through it the IOAS) is in use
        destroy(iommufd, ioas)
    detach_pt(cdev)
    destroy(iommufd, ioas)  # the automatic HWPT went away with the detach


def test_detach_when_not_attached(cdev: Fd, iommufd: Fd) -> None:
    bind_iommufd(cdev, iommufd.number)
    detach_pt(cdev)


def test_attach_invalid_pt_fails(cdev: Fd, iommufd: Fd) -> None:
    bind_iommufd(cdev, iommufd.number)
    with raises_errno(errno.ENOENT):
        attach_pt(cdev, U32_MAX)


def test_close_unbinds(kernel: Kernel, vfio_device: str, iommufd: Fd) -> None:
    with kernel.open_fd(vfio_device) as dev:
        devid = bind_iommufd(dev, iommufd.number)
    with raises_errno(errno.ENOENT):  # the device object left with the binding
        destroy(iommufd, devid)
    with kernel.open_fd(vfio_device) as dev:
        bind_iommufd(dev, iommufd.number)


def _region(dev: Fd, index: int) -> uapi.UapiStruct:
    info = uapi.new(uapi.vfio_region_info, index=index)
    dev.ioctl(uapi.VFIO_DEVICE_GET_REGION_INFO, info)
    return info


def test_region_access(cdev: Fd, iommufd: Fd) -> None:
    """pread/pwrite through the transport: config space IDs, the PCI command register and
    edu's identification and liveness registers in BAR0."""
    bind_iommufd(cdev, iommufd.number)
    cfg = _region(cdev, uapi.VFIO_PCI_CONFIG_REGION_INDEX)
    assert cfg.flags & uapi.VFIO_REGION_INFO_FLAG_READ
    ids = cdev.pread(4, cfg.offset)
    assert (int.from_bytes(ids[:2], "little"), int.from_bytes(ids[2:], "little")) == (
        0x1234,
        0x11E8,
    )
    command = int.from_bytes(cdev.pread(2, cfg.offset + 4), "little")
    assert cdev.pwrite((command | 0x6).to_bytes(2, "little"), cfg.offset + 4) == 2
    assert int.from_bytes(cdev.pread(2, cfg.offset + 4), "little") & 0x6 == 0x6

    bar0 = _region(cdev, uapi.VFIO_PCI_BAR0_REGION_INDEX)
    assert bar0.size >= 4096
    assert cdev.pread(4, bar0.offset) == (0x010000ED).to_bytes(4, "little")
    cdev.pwrite((0x12345678).to_bytes(4, "little"), bar0.offset + 4)
    assert cdev.pread(4, bar0.offset + 4) == (~0x12345678 & 0xFFFFFFFF).to_bytes(4, "little")
