"""Raw-uAPI helpers for the conformance suite: memory buffers and one function per call.

Each helper builds the kernel's struct with fastmap.uapi, issues the ioctl through a
fastmap.kernel.Fd and returns the output fields. Nothing here knows which kernel answers,
so every test runs unchanged on the real kernel and on the simulator.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import mmap
from collections.abc import Iterator, Sequence

import pytest

from fastmap import uapi
from fastmap._libc import libc as _libc
from fastmap.errors import KernelError
from fastmap.kernel import Fd

PAGE_SIZE = mmap.PAGESIZE
# The selftest mock domain's IOPTE size before Linux 6.19: half a CPU page.
MOCK_PAGE_SIZE = PAGE_SIZE // 2
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
RW = uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE


def hugepage_size() -> int:
    """The THP size (the selftests align their buffers to it)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 2 << 20


class Buffer:
    """Shared anonymous memory at a known address, aligned to `align` (like the selftests'
    MAP_SHARED|MAP_ANONYMOUS buffers). Unmapped by close() or at the end of a with block."""

    def __init__(self, length: int, align: int = PAGE_SIZE) -> None:
        span = length + align
        base = _libc.mmap(
            None,
            span,
            mmap.PROT_READ | mmap.PROT_WRITE,
            mmap.MAP_SHARED | mmap.MAP_ANONYMOUS,
            -1,
            0,
        )
        if base in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        self.addr = (base + align - 1) & ~(align - 1)
        self.length = length
        # Trim the alignment slack so only [addr, addr+length) stays mapped.
        if self.addr > base:
            _libc.munmap(base, self.addr - base)
        tail = base + span - (self.addr + length)
        if tail:
            _libc.munmap(self.addr + length, tail)
        self._mapped = True

    def read(self, length: int | None = None, offset: int = 0) -> bytes:
        return ctypes.string_at(
            self.addr + offset, self.length - offset if length is None else length
        )

    def write(self, data: bytes, offset: int = 0) -> None:
        ctypes.memmove(self.addr + offset, data, len(data))

    def zero(self, length: int | None = None, offset: int = 0) -> None:
        ctypes.memset(self.addr + offset, 0, self.length - offset if length is None else length)

    def close(self) -> None:
        if self._mapped:
            _libc.munmap(self.addr, self.length)
            self._mapped = False

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def raises_errno(err: int) -> Iterator[pytest.ExceptionInfo[KernelError]]:
    """Expect the block to fail with KernelError `err` (EXPECT_ERRNO in the selftests)."""
    with pytest.raises(KernelError) as info:
        yield info
    got = info.value.errno
    assert got == err, (
        f"expected {_errno.errorcode[err]}, got {_errno.errorcode.get(got, got)}: {info.value}"
    )


def errno_of(fn: object, *args: object) -> int:
    """0 if fn(*args) succeeds, else the KernelError's errno."""
    try:
        fn(*args)  # type: ignore[operator]
    except KernelError as e:
        return e.errno
    return 0


# --- iommufd ------------------------------------------------------------------------------


def ioas_alloc(fd: Fd) -> int:
    cmd = uapi.new(uapi.iommu_ioas_alloc)
    fd.ioctl(uapi.IOMMU_IOAS_ALLOC, cmd)
    return int(cmd.out_ioas_id)


def destroy(fd: Fd, obj_id: int) -> None:
    fd.ioctl(uapi.IOMMU_DESTROY, uapi.new(uapi.iommu_destroy, id=obj_id))


def ioas_map(
    fd: Fd, ioas: int, va: int, length: int, iova: int | None = None, flags: int = RW
) -> int:
    """IOMMU_IOAS_MAP; `iova` given means FIXED_IOVA. Returns the IOVA used."""
    if iova is not None:
        flags |= uapi.IOMMU_IOAS_MAP_FIXED_IOVA
    cmd = uapi.new(
        uapi.iommu_ioas_map, ioas_id=ioas, flags=flags, user_va=va, length=length, iova=iova or 0
    )
    fd.ioctl(uapi.IOMMU_IOAS_MAP, cmd)
    return int(cmd.iova)


def ioas_unmap(fd: Fd, ioas: int, iova: int, length: int) -> int:
    """IOMMU_IOAS_UNMAP; returns the number of bytes unmapped."""
    cmd = uapi.new(uapi.iommu_ioas_unmap, ioas_id=ioas, iova=iova, length=length)
    fd.ioctl(uapi.IOMMU_IOAS_UNMAP, cmd)
    return int(cmd.length)


def ioas_copy(
    fd: Fd,
    dst_ioas: int,
    src_ioas: int,
    src_iova: int,
    length: int,
    dst_iova: int | None = None,
    flags: int = RW,
) -> int:
    if dst_iova is not None:
        flags |= uapi.IOMMU_IOAS_MAP_FIXED_IOVA
    cmd = uapi.new(
        uapi.iommu_ioas_copy,
        flags=flags,
        dst_ioas_id=dst_ioas,
        src_ioas_id=src_ioas,
        length=length,
        dst_iova=dst_iova or 0,
        src_iova=src_iova,
    )
    fd.ioctl(uapi.IOMMU_IOAS_COPY, cmd)
    return int(cmd.dst_iova)


def ranges_array(
    ranges: Sequence[tuple[int, int]], extra: int = 0
) -> ctypes.Array[uapi.UapiStruct]:
    arr = (uapi.iommu_iova_range * (len(ranges) + extra))()
    for i, (start, last) in enumerate(ranges):
        arr[i].start, arr[i].last = start, last
    return arr


def allow_iovas(fd: Fd, ioas: int, ranges: Sequence[tuple[int, int]]) -> None:
    """IOMMU_IOAS_ALLOW_IOVAS with inclusive (start, last) ranges; [] clears."""
    arr = ranges_array(ranges, extra=1)
    cmd = uapi.new(
        uapi.iommu_ioas_allow_iovas,
        ioas_id=ioas,
        num_iovas=len(ranges),
        allowed_iovas=ctypes.addressof(arr),
    )
    fd.ioctl(uapi.IOMMU_IOAS_ALLOW_IOVAS, cmd)


def iova_ranges(fd: Fd, ioas: int, capacity: int = 16) -> tuple[list[tuple[int, int]], int]:
    """IOMMU_IOAS_IOVA_RANGES: ([(start, last)], out_iova_alignment)."""
    arr = ranges_array([], extra=capacity)
    cmd = uapi.new(
        uapi.iommu_ioas_iova_ranges,
        ioas_id=ioas,
        num_iovas=capacity,
        allowed_iovas=ctypes.addressof(arr),
    )
    fd.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
    return [(arr[i].start, arr[i].last) for i in range(cmd.num_iovas)], int(cmd.out_iova_alignment)


def option(fd: Fd, option_id: int, op: int, object_id: int = 0, val64: int = 0) -> int:
    cmd = uapi.new(uapi.iommu_option, option_id=option_id, op=op, object_id=object_id, val64=val64)
    fd.ioctl(uapi.IOMMU_OPTION, cmd)
    return int(cmd.val64)


def set_huge_pages(fd: Fd, ioas: int, value: int) -> None:
    option(fd, uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_SET, ioas, value)


def hwpt_alloc(fd: Fd, dev_id: int, pt_id: int, flags: int = 0) -> int:
    cmd = uapi.new(uapi.iommu_hwpt_alloc, dev_id=dev_id, pt_id=pt_id, flags=flags)
    fd.ioctl(uapi.IOMMU_HWPT_ALLOC, cmd)
    return int(cmd.out_hwpt_id)


def hw_info(fd: Fd, dev_id: int, data: ctypes.Structure | None = None) -> uapi.UapiStruct:
    cmd = uapi.new(uapi.iommu_hw_info, dev_id=dev_id)
    if data is not None:
        cmd.data_len = ctypes.sizeof(data)
        cmd.data_uptr = ctypes.addressof(data)
    fd.ioctl(uapi.IOMMU_GET_HW_INFO, cmd)
    return cmd


def set_dirty_tracking(fd: Fd, hwpt: int, enable: bool) -> None:
    flags = uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if enable else 0
    cmd = uapi.new(uapi.iommu_hwpt_set_dirty_tracking, hwpt_id=hwpt, flags=flags)
    fd.ioctl(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, cmd)


def get_dirty_bitmap(
    fd: Fd, hwpt: int, iova: int, length: int, page_size: int, data: int, flags: int = 0
) -> None:
    cmd = uapi.new(
        uapi.iommu_hwpt_get_dirty_bitmap,
        hwpt_id=hwpt,
        flags=flags,
        iova=iova,
        length=length,
        page_size=page_size,
        data=data,
    )
    fd.ioctl(uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, cmd)


# --- the iommufd selftest (CONFIG_IOMMUFD_TEST) -------------------------------------------


def selftest_cmd(op: int, obj_id: int = 0) -> uapi.UapiStruct:
    """An iommu_test_cmd for IOMMU_TEST_OP_`op` on object `obj_id`."""
    return uapi.new(uapi.iommu_test_cmd, op=op, id=obj_id)


def mock_domain(fd: Fd, pt_id: int) -> tuple[int, int, int]:
    """IOMMU_TEST_OP_MOCK_DOMAIN: a mock device bound and attached to `pt_id`.
    Returns (stdev_id, hwpt_id, idev_id)."""
    cmd = selftest_cmd(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, pt_id)
    fd.ioctl(uapi.IOMMU_TEST_CMD, cmd)
    m = cmd.u.mock_domain
    return int(m.out_stdev_id), int(m.out_hwpt_id), int(m.out_idev_id)


def mock_domain_flags(fd: Fd, pt_id: int, dev_flags: int) -> tuple[int, int, int]:
    cmd = selftest_cmd(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt_id)
    cmd.u.mock_domain_flags.dev_flags = dev_flags
    fd.ioctl(uapi.IOMMU_TEST_CMD, cmd)
    m = cmd.u.mock_domain_flags
    return int(m.out_stdev_id), int(m.out_hwpt_id), int(m.out_idev_id)


def add_reserved(fd: Fd, ioas: int, start: int, length: int) -> None:
    cmd = selftest_cmd(uapi.IOMMU_TEST_OP_ADD_RESERVED, ioas)
    cmd.u.add_reserved.start, cmd.u.add_reserved.length = start, length
    fd.ioctl(uapi.IOMMU_TEST_CMD, cmd)


def mock_set_dirty(fd: Fd, hwpt: int, iova: int, length: int, page_size: int, bitmap: int) -> int:
    """IOMMU_TEST_OP_DIRTY: mark the IOPTEs of the set bits dirty; returns how many."""
    cmd = selftest_cmd(uapi.IOMMU_TEST_OP_DIRTY, hwpt)
    d = cmd.u.dirty
    d.iova, d.length, d.page_size, d.uptr = iova, length, page_size, bitmap
    fd.ioctl(uapi.IOMMU_TEST_CMD, cmd)
    return int(cmd.u.dirty.out_nr_dirty)


# --- VFIO device cdev ---------------------------------------------------------------------


def bind_iommufd(dev: Fd, iommufd: int) -> int:
    """VFIO_DEVICE_BIND_IOMMUFD; returns out_devid."""
    cmd = uapi.new(uapi.vfio_device_bind_iommufd, iommufd=iommufd)
    dev.ioctl(uapi.VFIO_DEVICE_BIND_IOMMUFD, cmd)
    return int(cmd.out_devid)


def attach_pt(dev: Fd, pt_id: int) -> int:
    """VFIO_DEVICE_ATTACH_IOMMUFD_PT; returns pt_id as written back (the HWPT used)."""
    cmd = uapi.new(uapi.vfio_device_attach_iommufd_pt, pt_id=pt_id)
    dev.ioctl(uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd)
    return int(cmd.pt_id)


def detach_pt(dev: Fd) -> None:
    dev.ioctl(uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, uapi.new(uapi.vfio_device_detach_iommufd_pt))


def device_info(dev: Fd) -> uapi.UapiStruct:
    info = uapi.new(uapi.vfio_device_info)
    dev.ioctl(uapi.VFIO_DEVICE_GET_INFO, info)
    return info
