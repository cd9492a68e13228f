"""IOAS mapping behaviour (selftest fixture `iommufd_ioas`, variants no_domain/mock_domain).

no_domain: a fresh IOAS with nothing attached (byte-granular, no pinning, base IOVA 0).
mock_domain: the same with a selftest mock device attached (aperture
[MOCK_APERTURE_START, MOCK_APERTURE_LAST], MOCK_PAGE_SIZE IOPTEs, base IOVA = aperture start).
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
    RW,
    U64_MAX,
    Buffer,
    add_reserved,
    allow_iovas,
    destroy,
    hugepage_size,
    hw_info,
    ioas_alloc,
    ioas_copy,
    ioas_map,
    ioas_unmap,
    iova_ranges,
    mock_domain,
    raises_errno,
    set_huge_pages,
)

P = PAGE_SIZE


@dataclasses.dataclass
class Ioas:
    fd: Fd
    ioas_id: int
    base_iova: int
    buffer: Buffer  # 16 pages, hugepage aligned (the selftests' global buffer)
    stdev_id: int = 0
    hwpt_id: int = 0
    device_id: int = 0

    @property
    def mock(self) -> bool:
        return self.stdev_id != 0

    def map(self, length: int, iova: int | None = None, va: int | None = None) -> int:
        return ioas_map(self.fd, self.ioas_id, self.buffer.addr if va is None else va, length, iova)

    def unmap(self, iova: int, length: int) -> int:
        return ioas_unmap(self.fd, self.ioas_id, iova, length)


@pytest.fixture(params=["no_domain", "mock_domain"])
def ioas(request: pytest.FixtureRequest, iommufd: Fd) -> Iterator[Ioas]:
    if request.param == "mock_domain":
        request.getfixturevalue("selftest")
    with Buffer(16 * P, align=hugepage_size()) as buf:
        t = Ioas(iommufd, ioas_alloc(iommufd), 0, buf)
        if request.param == "mock_domain":
            t.stdev_id, t.hwpt_id, t.device_id = mock_domain(iommufd, t.ioas_id)
            t.base_iova = uapi.MOCK_APERTURE_START
        yield t


@pytest.fixture
def needs_selftest(request: pytest.FixtureRequest) -> None:
    """ADD_RESERVED needs IOMMU_TEST_CMD even without a mock domain."""
    request.getfixturevalue("selftest")


def lowbit(x: int) -> int:
    return x & -x


def test_ioas_destroy(ioas: Ioas) -> None:
    if ioas.mock:
        with raises_errno(errno.EBUSY):  # a device's HWPT uses it
            destroy(ioas.fd, ioas.ioas_id)
    else:
        destroy(ioas.fd, ioas.ioas_id)


def test_ioas_area_destroy(ioas: Ioas) -> None:
    ioas.map(P, ioas.base_iova)
    if ioas.mock:
        with raises_errno(errno.EBUSY):
            destroy(ioas.fd, ioas.ioas_id)
    else:
        destroy(ioas.fd, ioas.ioas_id)  # areas do not pin an IOAS


def test_area(ioas: Ioas) -> None:
    base = ioas.base_iova
    for i in range(10):  # nothing mapped
        with raises_errno(errno.ENOENT):
            ioas.unmap(i * P, P)
    for i in range(10):
        ioas.map(P, base + i * P)
    for i in range(10):
        assert ioas.unmap(base + i * P, P) == P

    # Unmap never splits an area.
    ioas.map(2 * P, base + 16 * P)
    with raises_errno(errno.ENOENT):
        ioas.unmap(base + 16 * P, P)
    with raises_errno(errno.ENOENT):
        ioas.unmap(base + 17 * P, P)

    # Over-mapping: same, inside, overlapping either end, covering.
    for length, start in ((2, 16), (1, 16), (1, 17), (2, 15), (3, 15)):
        with raises_errno(errno.EEXIST):
            ioas.map(length * P, base + start * P)

    assert ioas.unmap(0, U64_MAX) == 2 * P  # unmap all
    assert ioas.unmap(0, U64_MAX) == 0  # and again, on an empty IOAS


def test_unmap_fully_contained_areas(ioas: Ioas) -> None:
    base = ioas.base_iova + 4 * P  # room below the first area for no_domain
    for i in range(4):
        ioas.map(8 * P, base + i * 16 * P)
    with raises_errno(errno.ENOENT):  # ends inside the first area
        ioas.unmap(base - 4 * P, 8 * P)
    with raises_errno(errno.ENOENT):  # starts inside the last area
        ioas.unmap(base + 3 * 16 * P + 8 * P - 4 * P, 8 * P)
    # Holes inside the range are fine; the reply counts only what was mapped.
    assert ioas.unmap(base - 4 * P, 3 * 16 * P + 8 * P + 4 * P) == 32 * P


def test_area_auto_iova(ioas: Ioas, needs_selftest: None) -> None:
    iovas = [ioas.map(P) for _ in range(10)]
    for iova in iovas:
        ioas.unmap(iova, P)

    # The kernel aligns automatic IOVAs to the length's lowest set bit (at least).
    for i in range(10):
        length = P * (i + 1)
        # With no domain nothing is pinned, so even an unmapped VA can be mapped.
        va = ioas.buffer.addr if ioas.mock else 1 << 31
        iovas[i] = ioas.map(length, va=va)
        assert iovas[i] % lowbit(length) == 0, hex(iovas[i])
    for i, iova in enumerate(iovas):
        ioas.unmap(iova, P * (i + 1))

    # Reserved ranges are avoided.
    res_start, res_len = 4 * P, 100 * P
    add_reserved(ioas.fd, ioas.ioas_id, res_start, res_len)
    for i in range(10):
        length = P * (i + 1)
        iovas[i] = ioas.map(length)
        assert iovas[i] % lowbit(length) == 0
        assert not res_start < iovas[i] < res_start + res_len, hex(iovas[i])
    for i, iova in enumerate(iovas):
        ioas.unmap(iova, P * (i + 1))

    # An allowed range may not intersect a reserved one.
    with raises_errno(errno.EADDRINUSE):
        allow_iovas(ioas.fd, ioas.ioas_id, [(P, 600 * P)])

    # Allocation stays inside the allowed range.
    if ioas.mock:
        start, last = uapi.MOCK_APERTURE_START + P, uapi.MOCK_APERTURE_START + 600 * P - 1
    else:
        start, last = 200 * P, 600 * P - 1
    allow_iovas(ioas.fd, ioas.ioas_id, [(start, last)])
    for i in range(10):
        length = P * (i + 1)
        iovas[i] = ioas.map(length)
        assert iovas[i] % lowbit(length) == 0
        assert start <= iovas[i] and iovas[i] + length - 1 <= last, hex(iovas[i])
    for i, iova in enumerate(iovas):
        ioas.unmap(iova, P * (i + 1))


def test_area_allowed(ioas: Ioas, needs_selftest: None) -> None:
    # A reservation may not intersect an allowed range...
    start = ioas.base_iova
    allow_iovas(ioas.fd, ioas.ioas_id, [(start, start + 600 * P)])
    with raises_errno(errno.EADDRINUSE):
        add_reserved(ioas.fd, ioas.ioas_id, start + P, P)
    allow_iovas(ioas.fd, ioas.ioas_id, [])
    # ...nor an allowed range a reservation.
    add_reserved(ioas.fd, ioas.ioas_id, start + P, P)
    with raises_errno(errno.EADDRINUSE):
        allow_iovas(ioas.fd, ioas.ioas_id, [(start, start + 600 * P)])


def test_copy_area(ioas: Ioas) -> None:
    base = ioas.base_iova
    ioas.map(P, base)
    # Inside one IOAS...
    assert ioas_copy(ioas.fd, ioas.ioas_id, ioas.ioas_id, base, P, dst_iova=base + P) == base + P
    # ...and into another one.
    other = ioas_alloc(ioas.fd)
    assert ioas_copy(ioas.fd, other, ioas.ioas_id, base, P, dst_iova=0) == 0


def test_iova_ranges(ioas: Ioas) -> None:
    ranges, alignment = iova_ranges(ioas.fd, ioas.ioas_id)
    if ioas.mock:
        assert ranges == [(uapi.MOCK_APERTURE_START, uapi.MOCK_APERTURE_LAST)]
        assert alignment == MOCK_PAGE_SIZE
    else:
        assert ranges == [(0, U64_MAX)]
        assert alignment == 1

    # Too small a buffer: EMSGSIZE, the real count comes back, nothing is copied.
    arr = (uapi.iommu_iova_range * 2)()
    cmd = uapi.new(
        uapi.iommu_ioas_iova_ranges,
        ioas_id=ioas.ioas_id,
        num_iovas=0,
        allowed_iovas=ctypes.addressof(arr),
    )
    with raises_errno(errno.EMSGSIZE):
        ioas.fd.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
    assert cmd.num_iovas == 1
    assert (arr[0].start, arr[0].last) == (0, 0)


def test_iova_ranges_reserved(ioas: Ioas, needs_selftest: None) -> None:
    add_reserved(ioas.fd, ioas.ioas_id, P, P)
    ranges, _ = iova_ranges(ioas.fd, ioas.ioas_id)
    if ioas.mock:  # below the aperture, already reserved
        assert ranges == [(uapi.MOCK_APERTURE_START, uapi.MOCK_APERTURE_LAST)]
    else:
        assert ranges == [(0, P - 1), (2 * P, U64_MAX)]

    arr = (uapi.iommu_iova_range * 2)()
    cmd = uapi.new(
        uapi.iommu_ioas_iova_ranges,
        ioas_id=ioas.ioas_id,
        num_iovas=1,
        allowed_iovas=ctypes.addressof(arr),
    )
    if ioas.mock:
        ioas.fd.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
        assert cmd.num_iovas == 1
        assert (arr[0].start, arr[0].last) == (uapi.MOCK_APERTURE_START, uapi.MOCK_APERTURE_LAST)
    else:
        # The kernel fills what fits, reports the real count and fails.
        with raises_errno(errno.EMSGSIZE):
            ioas.fd.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
        assert cmd.num_iovas == 2
        assert (arr[0].start, arr[0].last) == (0, P - 1)
    assert (arr[1].start, arr[1].last) == (0, 0)


def test_ioas_iova_alloc(ioas: Ioas) -> None:
    # With no domain every byte length maps; a mock domain needs MOCK_PAGE_SIZE multiples.
    for length in range(1, 2 * P):
        if ioas.mock and length % MOCK_PAGE_SIZE:
            with raises_errno(errno.EINVAL):
                ioas.map(length)
        else:
            iova = ioas.map(length)
            assert ioas.unmap(iova, length) == length


def test_ioas_align_change(ioas: Ioas) -> None:
    if ioas.mock:
        pytest.skip("HUGE_PAGES cannot raise the alignment while a domain and areas exist")
    start = uapi.MOCK_APERTURE_START
    buf = ioas.buffer.addr
    # Everything is PAGE_SIZE aligned: upgrading the alignment works.
    ioas.map(P, start)
    set_huge_pages(ioas.fd, ioas.ioas_id, 0)
    # Now a misaligned VA is refused at map time.
    with raises_errno(errno.EINVAL):
        ioas.map(P, start + P, va=buf + MOCK_PAGE_SIZE)
    set_huge_pages(ioas.fd, ioas.ioas_id, 0)
    # Back to byte granularity; a misaligned area then blocks the upgrade.
    set_huge_pages(ioas.fd, ioas.ioas_id, 1)
    ioas.map(P, start + P, va=buf + MOCK_PAGE_SIZE)
    with raises_errno(errno.EADDRINUSE):
        set_huge_pages(ioas.fd, ioas.ioas_id, 0)
    ioas.unmap(start + P, P)
    ioas.unmap(start, P)


def test_hwpt_attach(ioas: Ioas) -> None:
    if ioas.mock:  # a second mock device straight onto the existing HWPT
        mock_domain(ioas.fd, ioas.hwpt_id)
    else:
        with raises_errno(errno.ENOENT):
            mock_domain(ioas.fd, ioas.hwpt_id)


def test_get_hw_info(ioas: Ioas) -> None:
    if not ioas.mock:
        with raises_errno(errno.ENOENT):
            hw_info(ioas.fd, ioas.device_id)
        return
    info = hw_info(ioas.fd, ioas.device_id)  # data_len 0: type and length only
    assert info.out_data_type == uapi.IOMMU_HW_INFO_TYPE_SELFTEST
    kernel_len = info.data_len
    assert kernel_len == 8  # struct iommu_test_hw_info {u32 flags; u32 test_reg}

    # A larger buffer: the record, then zeros up to data_len.
    big = (ctypes.c_uint8 * 16)(*([0xAA] * 16))
    cmd = uapi.new(
        uapi.iommu_hw_info, dev_id=ioas.device_id, data_len=16, data_uptr=ctypes.addressof(big)
    )
    ioas.fd.ioctl(uapi.IOMMU_GET_HW_INFO, cmd)
    assert cmd.data_len == kernel_len
    assert int.from_bytes(bytes(big[4:8]), "little") == uapi.IOMMU_HW_INFO_SELFTEST_REGVAL
    assert bytes(big[8:]) == bytes(8)

    # A smaller one gets what fits and nothing past it.
    small = (ctypes.c_uint8 * 8)(*([0xAA] * 8))
    cmd = uapi.new(
        uapi.iommu_hw_info, dev_id=ioas.device_id, data_len=4, data_uptr=ctypes.addressof(small)
    )
    ioas.fd.ioctl(uapi.IOMMU_GET_HW_INFO, cmd)
    assert bytes(small[4:]) == b"\xaa" * 4


def test_copy_sweep(ioas: Ioas) -> None:
    start = uapi.MOCK_APERTURE_START
    dst = ioas_alloc(ioas.fd)
    # The mock domain maps MOCK_PAGE_SIZE granules; with no domain any length maps.
    last = start + ioas.buffer.length - (1 if ioas.mock else 2)
    ioas.map(last - start + 1, start)
    for iova in range(start - P, last + 1, 511):
        if iova < start or iova + MOCK_PAGE_SIZE - 1 > last:
            with raises_errno(errno.ENOENT):  # not fully covered by the source
                ioas_copy(ioas.fd, dst, ioas.ioas_id, iova, MOCK_PAGE_SIZE, dst_iova=start)
        else:
            ioas_copy(ioas.fd, dst, ioas.ioas_id, iova, MOCK_PAGE_SIZE, dst_iova=start)
            ioas_unmap(ioas.fd, dst, start, MOCK_PAGE_SIZE)
    destroy(ioas.fd, dst)


def test_unmap_is_not_atomic(ioas: Ioas) -> None:
    base = ioas.base_iova
    ioas.map(P, base + P)
    ioas.map(2 * P, base + 3 * P)
    # Covers the first area, cuts the second: ENOENT, but the first is already gone.
    with raises_errno(errno.ENOENT):
        ioas.unmap(base + P, 3 * P)
    assert ioas.map(P, base + P) == base + P
    assert ioas.unmap(0, U64_MAX) == 3 * P


def test_map_check_order(ioas: Ioas) -> None:
    fd, good = ioas.fd, ioas.ioas_id
    va = ioas.buffer.addr

    def raw_map(**kw: int) -> None:
        fields = {"ioas_id": good, "flags": RW, "user_va": va, "length": P, "iova": 0}
        fields.update(kw)
        fd.ioctl(uapi.IOMMU_IOAS_MAP, uapi.new(uapi.iommu_ioas_map, **fields))

    fixed = RW | uapi.IOMMU_IOAS_MAP_FIXED_IOVA
    bad_id = 0xFFFF
    # Each row: the first failing check wins over every later one in the same call.
    with raises_errno(errno.EOPNOTSUPP):  # unknown flags, before the id lookup
        raw_map(flags=RW | 1 << 3, ioas_id=bad_id)
    with raises_errno(errno.EOPNOTSUPP):
        raw_map(reserved=1, ioas_id=bad_id)
    with raises_errno(errno.EOVERFLOW):
        raw_map(length=U64_MAX, ioas_id=bad_id)
    with raises_errno(errno.EOVERFLOW):
        raw_map(iova=U64_MAX, ioas_id=bad_id)
    with raises_errno(errno.EINVAL):  # neither readable nor writeable
        raw_map(flags=uapi.IOMMU_IOAS_MAP_FIXED_IOVA, ioas_id=bad_id)
    with raises_errno(errno.ENOENT):
        raw_map(ioas_id=bad_id, length=0)
    with raises_errno(errno.EINVAL):
        raw_map(length=0)
    with raises_errno(errno.EOVERFLOW):  # user_va + length wraps
        raw_map(user_va=U64_MAX - P + 2)
    with raises_errno(errno.EOVERFLOW):  # iova + length - 1 wraps (iova itself aligned)
        raw_map(flags=fixed, iova=U64_MAX + 1 - MOCK_PAGE_SIZE)
    if ioas.mock:  # alignment is checked before the wrap
        with raises_errno(errno.EINVAL):
            raw_map(flags=fixed, iova=U64_MAX - P + 2)


def test_unmap_check_order(ioas: Ioas) -> None:
    with raises_errno(errno.ENOENT):
        ioas_unmap(ioas.fd, 0xFFFF, 0, 0)
    with raises_errno(errno.EINVAL):
        ioas.unmap(ioas.base_iova, 0)
    with raises_errno(errno.EOVERFLOW):
        ioas.unmap(U64_MAX - P + 2, P)
    with raises_errno(errno.EOVERFLOW):
        ioas.unmap(P, U64_MAX)
