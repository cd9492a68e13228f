"""IOMMU_OPTION, IOMMU_VFIO_IOAS and the VFIO container calls on a bare /dev/iommu
(selftests global_options, ioas_option_huge_pages, vfio_ioas, simple_ioctls, unmap_cmd,
map_cmd, info_cmd, set_iommu_cmd)."""

from __future__ import annotations

import ctypes
import errno

from fastmap import uapi
from fastmap.kernel import Fd

from .helpers import ioas_alloc, option, raises_errno

GET, SET = uapi.IOMMU_OPTION_OP_GET, uapi.IOMMU_OPTION_OP_SET
RLIMIT, HUGE = uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_HUGE_PAGES


def test_global_options(iommufd: Fd) -> None:
    assert option(iommufd, RLIMIT, GET, val64=1) == 0  # per-user accounting by default
    assert option(iommufd, RLIMIT, SET, val64=1) == 1  # needs CAP_SYS_RESOURCE
    with raises_errno(errno.EINVAL):
        option(iommufd, RLIMIT, SET, val64=2)
    assert option(iommufd, RLIMIT, GET) == 1
    option(iommufd, RLIMIT, SET, val64=0)
    with raises_errno(errno.EOPNOTSUPP):  # a global option takes no object
        option(iommufd, RLIMIT, GET, object_id=1)
    with raises_errno(errno.ENOENT):  # HUGE_PAGES is per IOAS; id 0 is none
        option(iommufd, HUGE, GET)
    with raises_errno(errno.ENOENT):
        option(iommufd, HUGE, SET)
    with raises_errno(errno.EOPNOTSUPP):
        option(iommufd, 0x1234, GET)
    # The accounting mode can only change while the context has no objects.
    ioas_alloc(iommufd)
    with raises_errno(errno.EBUSY):
        option(iommufd, RLIMIT, SET, val64=1)


def test_ioas_option_huge_pages(iommufd: Fd) -> None:
    ioas = ioas_alloc(iommufd)
    assert option(iommufd, HUGE, GET, ioas, val64=3) == 1
    option(iommufd, HUGE, SET, ioas, 0)
    assert option(iommufd, HUGE, GET, ioas, val64=3) == 0
    with raises_errno(errno.EINVAL):
        option(iommufd, HUGE, SET, ioas, 2)
    option(iommufd, HUGE, SET, ioas, 1)


def _vfio_ioas(fd: Fd, op: int, ioas_id: int = 0) -> int:
    cmd = uapi.new(uapi.iommu_vfio_ioas, op=op, ioas_id=ioas_id)
    fd.ioctl(uapi.IOMMU_VFIO_IOAS, cmd)
    return int(cmd.ioas_id)


def test_compat_unmap_map_info_need_an_ioas(iommufd: Fd) -> None:
    page = 4096
    buf = ctypes.create_string_buffer(page)
    unmap = uapi.new(uapi.vfio_iommu_type1_dma_unmap, iova=uapi.MOCK_APERTURE_START, size=page)
    dma_map = uapi.new(
        uapi.vfio_iommu_type1_dma_map,
        iova=uapi.MOCK_APERTURE_START,
        size=page,
        vaddr=ctypes.addressof(buf),
    )
    for request, cmd, flags in (
        (uapi.VFIO_IOMMU_UNMAP_DMA, unmap, 0),
        (
            uapi.VFIO_IOMMU_MAP_DMA,
            dma_map,
            uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE,
        ),
    ):
        cmd.argsz = 1
        with raises_errno(errno.EINVAL):
            iommufd.ioctl(request, cmd)
        cmd.argsz, cmd.flags = ctypes.sizeof(cmd), 1 << 31
        with raises_errno(errno.EINVAL):
            iommufd.ioctl(request, cmd)
        cmd.flags = flags
        with raises_errno(errno.ENODEV):
            iommufd.ioctl(request, cmd)

    info = uapi.new(uapi.vfio_iommu_type1_info, argsz=1)
    with raises_errno(errno.EINVAL):
        iommufd.ioctl(uapi.VFIO_IOMMU_GET_INFO, info)
    info.argsz = ctypes.sizeof(info)
    with raises_errno(errno.ENODEV):
        iommufd.ioctl(uapi.VFIO_IOMMU_GET_INFO, info)

    for iommu_type in (uapi.VFIO_TYPE1v2_IOMMU, uapi.VFIO_TYPE1_IOMMU):
        with raises_errno(errno.ENODEV):
            iommufd.ioctl(uapi.VFIO_SET_IOMMU, iommu_type)
