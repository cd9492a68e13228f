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
    U64_MAX,
    Buffer,
    add_reserved,
    allow_iovas,
    destroy,
    hugepage_size,
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
