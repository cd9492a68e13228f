"""VFIO device cdev region access through fastmap.kernel (the bind, attach, detach and
close rules of vfio_iommufd_setup_test are checked, errno by errno, in test_raw_vfio_cdev.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastmap import uapi
from fastmap.kernel import Fd, Kernel

from .helpers import (
    bind_iommufd,
)


@pytest.fixture
def cdev(kernel: Kernel, vfio_device: str) -> Iterator[Fd]:
    with kernel.open_fd(vfio_device) as fd:
        yield fd


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
