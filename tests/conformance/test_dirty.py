"""Dirty tracking through the selftest mock domain (selftest fixture `iommufd_dirty_tracking`).

The mock IOMMU supports dirty tracking; IOMMU_TEST_OP_DIRTY plays the device, marking IOPTEs
dirty, and IOMMU_HWPT_GET_DIRTY_BITMAP must report exactly those, with and without NO_CLEAR,
into a bitmap at any alignment (page aligned, +MOCK_PAGE_SIZE, +0xff1).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
from collections.abc import Iterator

import pytest

from fastmap import uapi
from fastmap.kernel import Fd

from .helpers import (
    MOCK_PAGE_SIZE,
    PAGE_SIZE,
    Buffer,
    destroy,
    get_dirty_bitmap,
    hugepage_size,
    hw_info,
    hwpt_alloc,
    ioas_alloc,
    ioas_map,
    mock_domain,
    mock_domain_flags,
    mock_set_dirty,
    raises_errno,
    set_dirty_tracking,
)

BUFFER_SIZES = {
    "128k": 128 << 10,  # one u32 of bitmap
    "256k": 256 << 10,  # one u64
    "640k": 640 << 10,  # two u64 and a tail
    "2M": 2 << 20,
    "128M": 128 << 20,  # a 4 KiB bitmap
}
BITMAP_OFFSETS = {"aligned": 0, "mock_page": MOCK_PAGE_SIZE, "odd": 0xFF1}


@dataclasses.dataclass
class Dirty:
    fd: Fd
    ioas_id: int
    stdev_id: int
    hwpt_id: int
    idev_id: int
    buffer: Buffer
    bitmap: Buffer
    page_size: int = MOCK_PAGE_SIZE

    @property
    def bitmap_size(self) -> int:
        return self.buffer.length // self.page_size // 8


@pytest.fixture(params=list(BUFFER_SIZES), ids=[f"domain_dirty{k}" for k in BUFFER_SIZES])
def dirty(request: pytest.FixtureRequest, iommufd: Fd, selftest: bool) -> Iterator[Dirty]:
    size = BUFFER_SIZES[request.param]
    with Buffer(size, align=hugepage_size()) as buf:
        bitmap_size = size // MOCK_PAGE_SIZE // 8
        # Room for the unaligned-bitmap cases past the end.
        with Buffer(bitmap_size + PAGE_SIZE) as bitmap:
            ioas = ioas_alloc(iommufd)
            stdev, hwpt, idev = mock_domain(iommufd, ioas)
            yield Dirty(iommufd, ioas, stdev, hwpt, idev, buf, bitmap)


def test_enforce_dirty(dirty: Dirty) -> None:
    fd = dirty.fd
    # A dirty-tracking HWPT takes dirty-capable devices, refuses the others.
    hwpt = hwpt_alloc(fd, dirty.idev_id, dirty.ioas_id, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    stdev, _, _ = mock_domain(fd, hwpt)
    with raises_errno(errno.EINVAL):
        mock_domain_flags(fd, hwpt, uapi.MOCK_FLAGS_DEVICE_NO_DIRTY)
    destroy(fd, stdev)
    destroy(fd, hwpt)

    # A device whose IOMMU cannot track dirty pages cannot get such a HWPT.
    ioas = ioas_alloc(fd)
    stdev, _, idev = mock_domain_flags(fd, ioas, uapi.MOCK_FLAGS_DEVICE_NO_DIRTY)
    with raises_errno(errno.EOPNOTSUPP):
        hwpt_alloc(fd, idev, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    destroy(fd, stdev)


def test_set_dirty_tracking(dirty: Dirty) -> None:
    fd = dirty.fd
    hwpt = hwpt_alloc(fd, dirty.idev_id, dirty.ioas_id, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    stdev, _, _ = mock_domain(fd, hwpt)
    set_dirty_tracking(fd, hwpt, True)
    set_dirty_tracking(fd, hwpt, False)
    destroy(fd, stdev)
    destroy(fd, hwpt)


def test_device_dirty_capability(dirty: Dirty) -> None:
    fd = dirty.fd
    hwpt = hwpt_alloc(fd, dirty.idev_id, dirty.ioas_id, 0)
    stdev, _, _ = mock_domain(fd, hwpt)
    info = hw_info(fd, dirty.idev_id)
    assert info.out_capabilities & uapi.IOMMU_HW_CAP_DIRTY_TRACKING
    assert info.out_data_type == uapi.IOMMU_HW_INFO_TYPE_SELFTEST
    destroy(fd, stdev)
    destroy(fd, hwpt)


def _bitmap_int(addr: int, size: int) -> int:
    return int.from_bytes(ctypes.string_at(addr, size), "little")


def _pattern(nbits: int, npte: int, pteset: int, first_only: bool) -> bytes:
    """Bits set every `pteset`, `npte` wide (or only the first bit of each set)."""
    out = bytearray((nbits + 7) // 8)
    for i in range(0, nbits, pteset):
        for j in range(1 if first_only else npte):
            out[(i + j) >> 3] |= 1 << ((i + j) & 7)
    return bytes(out)


def check_mock_dirty_bitmaps(d: Dirty, hwpt: int, bitmap_addr: int, flags: int) -> None:
    """The selftests' _test_mock_dirty_bitmaps with pte_page_size == page_size."""
    iova, length, page_size = uapi.MOCK_APERTURE_START, d.buffer.length, d.page_size
    size = d.bitmap_size
    npte = MOCK_PAGE_SIZE // page_size
    pteset = 2 * npte
    nbits = size * 8
    nr = nbits // pteset or 1

    # Mark every other PTE dirty, as a device writing would.
    ctypes.memmove(bitmap_addr, _pattern(nbits, npte, pteset, first_only=True), size)
    assert mock_set_dirty(d.fd, hwpt, iova, length, page_size, bitmap_addr) == nr

    # Exactly those come back...
    want = int.from_bytes(_pattern(nbits, npte, pteset, first_only=False), "little")
    ctypes.memset(bitmap_addr, 0, size)
    get_dirty_bitmap(d.fd, hwpt, iova, length, page_size, bitmap_addr, flags)
    assert _bitmap_int(bitmap_addr, size) == want

    # ...and a second read finds them cleared, unless NO_CLEAR kept them.
    ctypes.memset(bitmap_addr, 0, size)
    get_dirty_bitmap(d.fd, hwpt, iova, length, page_size, bitmap_addr, flags)
    no_clear = flags & uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR
    assert _bitmap_int(bitmap_addr, size) == (want if no_clear else 0)


@pytest.mark.parametrize("no_clear", [False, True], ids=["clear", "no_clear"])
def test_get_dirty_bitmap(dirty: Dirty, no_clear: bool) -> None:
    fd = dirty.fd
    ioas = ioas_alloc(fd)
    ioas_map(fd, ioas, dirty.buffer.addr, dirty.buffer.length, uapi.MOCK_APERTURE_START)
    hwpt = hwpt_alloc(fd, dirty.idev_id, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    stdev, _, _ = mock_domain(fd, hwpt)
    set_dirty_tracking(fd, hwpt, True)

    flags = uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR if no_clear else 0
    # With NO_CLEAR the PTEs stay dirty from one round to the next, as in the selftest.
    for offset in BITMAP_OFFSETS.values():
        check_mock_dirty_bitmaps(dirty, hwpt, dirty.bitmap.addr + offset, flags)

    destroy(fd, stdev)
    destroy(fd, hwpt)


def test_dirty_check_order(dirty: Dirty) -> None:
    fd = dirty.fd
    iova, length, ps = uapi.MOCK_APERTURE_START, dirty.buffer.length, MOCK_PAGE_SIZE
    ioas_map(fd, dirty.ioas_id, dirty.buffer.addr, length, iova)
    hwpt = hwpt_alloc(fd, dirty.idev_id, dirty.ioas_id, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    stdev, _, _ = mock_domain(fd, hwpt)
    data = dirty.bitmap.addr

    def get(**kw: int) -> None:
        fields = {"hwpt_id": hwpt, "iova": iova, "length": length, "page_size": ps, "data": data}
        fields.update(kw)
        cmd = uapi.new(uapi.iommu_hwpt_get_dirty_bitmap, **fields)
        fd.ioctl(uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, cmd)

    with raises_errno(errno.EOPNOTSUPP):
        get(flags=2, hwpt_id=0xFFFF)
    with raises_errno(errno.EOPNOTSUPP):
        get(reserved=1, hwpt_id=0xFFFF)
    with raises_errno(errno.ENOENT):
        get(hwpt_id=0xFFFF, page_size=0)
    with raises_errno(errno.ENOENT):  # an IOAS is not a HWPT
        get(hwpt_id=dirty.ioas_id)
    with raises_errno(errno.EOVERFLOW):
        get(iova=1 << 63, length=(1 << 63) + ps, page_size=0)
    with raises_errno(errno.EINVAL):  # not aligned to the IOAS's IOVA alignment
        get(iova=iova + 1, page_size=0)
    with raises_errno(errno.EINVAL):
        get(page_size=0)
    with raises_errno(errno.EINVAL):  # not aligned to page_size
        get(length=length - ps, page_size=2 * ps)
    with raises_errno(errno.EOPNOTSUPP):  # the mock domain's own HWPT cannot track
        get(hwpt_id=dirty.hwpt_id)

    # Tracking off, or holes in the range: success, nothing reported.
    ctypes.memset(data, 0, dirty.bitmap_size)
    get()
    assert ctypes.string_at(data, dirty.bitmap_size) == bytes(dirty.bitmap_size)

    set_cmd = uapi.new(uapi.iommu_hwpt_set_dirty_tracking, hwpt_id=hwpt, flags=2)
    with raises_errno(errno.EOPNOTSUPP):
        fd.ioctl(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, set_cmd)
    with raises_errno(errno.EOPNOTSUPP):
        set_dirty_tracking(fd, dirty.hwpt_id, True)
    with raises_errno(errno.ENOENT):
        set_dirty_tracking(fd, 0xFFFF, True)
    destroy(fd, stdev)
    destroy(fd, hwpt)


def test_enable_clears_old_dirt(dirty: Dirty) -> None:
    """Enabling tracking starts from a clean snapshot; reads only ever OR into the bitmap."""
    fd = dirty.fd
    iova, length, ps = uapi.MOCK_APERTURE_START, dirty.buffer.length, MOCK_PAGE_SIZE
    ioas = ioas_alloc(fd)
    ioas_map(fd, ioas, dirty.buffer.addr, length, iova)
    hwpt = hwpt_alloc(fd, dirty.idev_id, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    stdev, _, _ = mock_domain(fd, hwpt)
    size, data = dirty.bitmap_size, dirty.bitmap.addr
    set_dirty_tracking(fd, hwpt, True)
    ctypes.memset(data, 0xFF, size)
    assert mock_set_dirty(fd, hwpt, iova, length, ps, data) == size * 8
    set_dirty_tracking(fd, hwpt, False)
    set_dirty_tracking(fd, hwpt, True)  # the earlier dirt is dropped here
    ctypes.memset(data, 0, size)
    get_dirty_bitmap(fd, hwpt, iova, length, ps, data)
    assert ctypes.string_at(data, size) == bytes(size)

    # The kernel never clears caller bits: a pre-set bitmap stays set.
    ctypes.memset(data, 0x0F, size)
    get_dirty_bitmap(fd, hwpt, iova, length, ps, data)
    assert ctypes.string_at(data, size) == b"\x0f" * size
    destroy(fd, stdev)
    destroy(fd, hwpt)
