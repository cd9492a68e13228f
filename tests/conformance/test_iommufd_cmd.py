"""The iommufd ioctl dispatcher's generic rules (selftest fixture `iommufd`).

Behaviours of cmd_fail, cmd_ex_fail and cmd_length: object id 0 never exists, a NULL
argument faults, unknown numbers are ENOTTY, and for every extensible struct a size below
min_size is EINVAL, a larger size with non-zero extra bytes is E2BIG and a larger size with a
zero tail acts exactly like the normal size.
"""

from __future__ import annotations

import ctypes
import errno

import pytest

from fastmap import uapi
from fastmap.errors import KernelError
from fastmap.kernel import Fd

from .helpers import raises_errno

# (request, struct, last mandatory field, first kernel version that has the ioctl)
LENGTH_CASES = [
    ("IOMMU_DESTROY", "iommu_destroy", "id", 602),
    ("IOMMU_GET_HW_INFO", "iommu_hw_info", "reserved", 606),
    ("IOMMU_HWPT_ALLOC", "iommu_hwpt_alloc", "reserved", 606),
    ("IOMMU_IOAS_ALLOC", "iommu_ioas_alloc", "out_ioas_id", 602),
    ("IOMMU_IOAS_IOVA_RANGES", "iommu_ioas_iova_ranges", "out_iova_alignment", 602),
    ("IOMMU_IOAS_ALLOW_IOVAS", "iommu_ioas_allow_iovas", "allowed_iovas", 602),
    ("IOMMU_IOAS_MAP", "iommu_ioas_map", "iova", 602),
    ("IOMMU_IOAS_COPY", "iommu_ioas_copy", "src_iova", 602),
    ("IOMMU_IOAS_UNMAP", "iommu_ioas_unmap", "length", 602),
    ("IOMMU_OPTION", "iommu_option", "val64", 602),
    ("IOMMU_VFIO_IOAS", "iommu_vfio_ioas", "reserved", 602),
    ("IOMMU_HWPT_SET_DIRTY_TRACKING", "iommu_hwpt_set_dirty_tracking", "reserved", 607),
    ("IOMMU_HWPT_GET_DIRTY_BITMAP", "iommu_hwpt_get_dirty_bitmap", "data", 607),
    ("IOMMU_IOAS_MAP_FILE", "iommu_ioas_map_file", "iova", 613),
    ("IOMMU_IOAS_CHANGE_PROCESS", "iommu_ioas_change_process", "reserved", 614),
]


def test_simple_close(iommufd: Fd) -> None:
    iommufd.close()


def test_cmd_fail(iommufd: Fd) -> None:
    # Object id 0 is never allocated.
    with raises_errno(errno.ENOENT):
        iommufd.ioctl(uapi.IOMMU_DESTROY, uapi.new(uapi.iommu_destroy, id=0))
    # The size header is read through the pointer first.
    with raises_errno(errno.EFAULT):
        iommufd.ioctl(uapi.IOMMU_DESTROY, None)
    # Below the iommufd range (and not a VFIO compat call).
    bogus = (uapi.IOMMUFD_TYPE << 8) | (uapi.IOMMUFD_CMD_BASE - 1)
    with raises_errno(errno.ENOTTY):
        iommufd.ioctl(bogus, uapi.new(uapi.iommu_destroy, id=0))


def test_cmd_ex_fail(iommufd: Fd) -> None:
    raw = (ctypes.c_uint8 * (ctypes.sizeof(uapi.iommu_destroy) + 8))()
    cmd = uapi.iommu_destroy.from_buffer(raw)
    cmd.size, cmd.id = ctypes.sizeof(raw), 0
    with raises_errno(errno.ENOENT):  # longer command, zero future area
        iommufd.ioctl(uapi.IOMMU_DESTROY, raw)
    raw[ctypes.sizeof(uapi.iommu_destroy)] = 1
    with raises_errno(errno.E2BIG):  # future area non-zero
        iommufd.ioctl(uapi.IOMMU_DESTROY, raw)
    cmd.size = ctypes.sizeof(uapi.iommu_destroy)
    with raises_errno(errno.ENOENT):  # the original size ignores the future area
        iommufd.ioctl(uapi.IOMMU_DESTROY, raw)
    cmd.size = ctypes.sizeof(uapi.iommu_destroy) - 1
    with raises_errno(errno.EINVAL):
        iommufd.ioctl(uapi.IOMMU_DESTROY, raw)


def _outcome(iommufd: Fd, request: int, raw: ctypes.Array[ctypes.c_uint8]) -> int:
    try:
        iommufd.ioctl(request, raw)
    except KernelError as e:
        return e.errno
    return 0


@pytest.mark.parametrize(
    ("request_name", "struct", "last", "since"), LENGTH_CASES, ids=[c[0] for c in LENGTH_CASES]
)
def test_cmd_length(
    iommufd: Fd, kernel_version: int, request_name: str, struct: str, last: str, since: int
) -> None:
    request = uapi.CONSTANTS[request_name]
    if kernel_version < since:
        # Older kernels do not know the number at all, whatever the struct says.
        with raises_errno(errno.ENOTTY):
            iommufd.ioctl(request, uapi.new(uapi.STRUCTS[struct]))
        return
    cls = uapi.STRUCTS[struct]
    size = ctypes.sizeof(cls)
    min_size = uapi.offsetofend(cls, last)

    # The struct followed by one extra byte, all zero except the size header and the extra.
    raw = (ctypes.c_uint8 * (size + 8))()
    header = ctypes.c_uint32.from_buffer(raw)
    raw[size] = 0xFF

    header.value = min_size - 1
    with raises_errno(errno.EINVAL):
        iommufd.ioctl(request, raw)
    header.value = size + 1
    with raises_errno(errno.E2BIG):
        iommufd.ioctl(request, raw)

    header.value = size
    expected = _outcome(iommufd, request, raw)
    header.value = size + 1
    raw[size] = 0
    assert _outcome(iommufd, request, raw) == expected
