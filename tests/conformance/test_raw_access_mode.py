"""open(2)'s access mode on /dev/iommu, /dev/vfio/vfio and a VFIO device cdev.

Neither iommufd nor vfio checks f_mode when a node is opened (the process is root), and
ioctls ignore it; read, write and mmap are refused by the VFS itself: EBADF for a read
of a write-only or a write of a read-only file, EACCES for an mmap of a file that is not
readable, or a shared writable mmap of one that is not writable.
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any

import pytest

from fastmap.kernel import Kernel

from .raw import CFG_OFF, IoasFd, close, ioctl, make, track


def mmap_errno(kernel: Kernel, core: Any, fd: int, prot: int) -> int:
    """-errno of a 4 KiB MAP_SHARED mmap of `fd` at offset 0 (0 if it mapped)."""
    if kernel.name == "real":
        try:
            mmap.mmap(fd, 4096, flags=mmap.MAP_SHARED, prot=prot).close()
        except OSError as e:
            return -(e.errno or 0)
        return 0
    r = int(core.mmap(fd, 4096, prot, mmap.MAP_SHARED, 0))
    return r if r < 0 else 0


MODES = [("O_RDONLY", os.O_RDONLY), ("O_WRONLY", os.O_WRONLY), ("O_RDWR", os.O_RDWR)]


@pytest.mark.parametrize(("name", "mode"), MODES, ids=[m[0] for m in MODES])
def test_iommufd_ioctls_work_in_every_access_mode(core: Any, name: str, mode: int) -> None:
    fd = track(core, core.open("/dev/iommu", mode))
    assert fd >= 0, (name, fd)
    alloc = make("iommu_ioas_alloc")
    assert ioctl(core, fd, "IOMMU_IOAS_ALLOC", alloc) == 0
    assert alloc.out_ioas_id > 0
    assert close(core, fd) == 0


@pytest.mark.parametrize(("name", "mode"), MODES, ids=[m[0] for m in MODES])
def test_vfio_container_opens_in_every_access_mode(
    core: Any, pci: dict[str, Any], name: str, mode: int
) -> None:
    # (the simulator creates /dev/vfio/vfio with its first PCI device, as vfio.ko loads)
    fd = track(core, core.open("/dev/vfio/vfio", mode))
    assert fd >= 0, (name, fd)
    assert ioctl(core, fd, "VFIO_GET_API_VERSION", None) == 0  # VFIO_API_VERSION
    assert close(core, fd) == 0


def test_device_cdev_read_write_and_mmap_follow_the_access_mode(
    kernel: Kernel, core: Any, pci: dict[str, Any]
) -> None:
    ro = track(core, core.open(pci["cdev"], os.O_RDONLY))
    wo = track(core, core.open(pci["cdev"], os.O_WRONLY))
    assert ro >= 0 and wo >= 0, (ro, wo)
    # An unbound cdev refuses region access itself; the VFS's access check comes first.
    assert core.pwrite(ro, b"\0\0", CFG_OFF) == -errno.EBADF
    assert core.pread(wo, 2, CFG_OFF) == -errno.EBADF
    assert mmap_errno(kernel, core, wo, mmap.PROT_READ) == -errno.EACCES
    assert mmap_errno(kernel, core, ro, mmap.PROT_READ | mmap.PROT_WRITE) == -errno.EACCES
    # ioctls do not look at the mode: the bind of a read-only cdev works.
    iommufd = IoasFd(core)
    bind = make("vfio_device_bind_iommufd", iommufd=iommufd.fd)
    assert ioctl(core, ro, "VFIO_DEVICE_BIND_IOMMUFD", bind) == 0
    assert close(core, wo) == 0
    assert close(core, ro) == 0
