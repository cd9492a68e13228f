"""IOAS semantics with and without a domain: MAP/UNMAP/COPY/ALLOW_IOVAS/IOVA_RANGES/OPTION
(doc §2.1, §2.2, §2.5, §2.6)."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from .raw import FIXED, MOCK_PAGE, PAGE, U64_MAX, Iommufd, K, R, W, anon, make

APERTURE = (K["MOCK_APERTURE_START"], K["MOCK_APERTURE_LAST"])
BOGUS_VA = 1 << 31  # unmapped; fine while no domain is attached


@pytest.fixture(params=["no_domain", "mock_domain", "two_mock_domain"])
def env(request: pytest.FixtureRequest, core: Any) -> tuple[Iommufd, int, int]:
    """(fd, ioas, base_iova) like the selftest's iommufd_ioas fixture variants."""
    domains = {"no_domain": 0, "mock_domain": 1, "two_mock_domain": 2}[request.param]
    if domains:
        request.getfixturevalue("selftest")
    f = Iommufd(core)
    ioas = f.ioas()
    for _ in range(domains):
        assert f.mock_domain(ioas)[0] == 0
    return f, ioas, APERTURE[0]


def buffer(length: int) -> int:
    return anon(length, align=1 << 21)


# ---- MAP ---------------------------------------------------------------------------------


def test_map_check_order(core: Any, kernel_version: int) -> None:
    f = Iommufd(core)
    ioas = f.ioas()
    va = buffer(PAGE)

    def call(**kw: int) -> int:
        fields = {"ioas_id": ioas, "user_va": va, "length": PAGE, "flags": R | W} | kw
        return f.ioctl("IOMMU_IOAS_MAP", make("iommu_ioas_map", **fields))

    assert call(flags=R | W | (1 << 3)) == -errno.EOPNOTSUPP
    assert call(reserved=1, iova=U64_MAX) == -errno.EOPNOTSUPP  # before EOVERFLOW
    assert call(iova=U64_MAX, flags=0) == -errno.EOVERFLOW  # before EINVAL
    assert call(length=U64_MAX) == -errno.EOVERFLOW
    assert call(flags=FIXED, ioas_id=99) == -errno.EINVAL  # no R/W before the lookup
    assert call(ioas_id=99) == -errno.ENOENT
    assert call(user_va=U64_MAX - PAGE + 1, length=PAGE) == -errno.EOVERFLOW
    assert call(length=0) == -errno.EINVAL
    # 6.13 tests va + length for a wrap first; 6.12 the length rule first.
    wrap = errno.EOVERFLOW if kernel_version >= 613 else errno.EINVAL
    assert call(length=U64_MAX - 1) == -wrap
    assert call(user_va=0, length=U64_MAX - PAGE + 1) == -errno.EINVAL  # > SIZE_MAX-PAGE
    assert call(flags=R | W | FIXED, iova=U64_MAX - 10, length=PAGE) == -errno.EOVERFLOW
    assert call() == 0


def test_map_overflow_order_by_version() -> None:
    """6.12 applies the length rule before the va + length overflow test; 6.13 swapped them."""
    for version, expect in ((612, errno.EINVAL), (613, errno.EOVERFLOW)):
        f = Iommufd(kernel_version=version)
        ioas = f.ioas()
        assert f.map(ioas, buffer(PAGE), U64_MAX - 1)[0] == -expect
        assert f.map(ioas, U64_MAX - PAGE, 2 * PAGE)[0] == -errno.EOVERFLOW


def test_no_domain_maps_are_lazy_and_byte_granular(core: Any) -> None:
    f = Iommufd(core)
    ioas = f.ioas()
    # The VA is not even checked without a domain.
    rc, iova = f.map(ioas, BOGUS_VA, PAGE)
    assert rc == 0
    assert f.unmap(ioas, iova, PAGE) == (0, PAGE)
    # Every length from 1 to 2*PAGE-1 maps (selftest ioas_iova_alloc).
    va = buffer(2 * PAGE)
    for length in range(1, 2 * PAGE):
        rc, iova = f.map(ioas, va, length)
        assert rc == 0, length
        assert f.unmap(ioas, iova, length) == (0, length)
    rc, _, align = f.iova_ranges(ioas)
    assert (rc, align) == (0, 1)


def test_mock_domain_lengths_must_be_aligned(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    f.mock_domain(ioas)
    va = buffer(2 * PAGE)
    for length in range(1, 2 * PAGE):
        rc, iova = f.map(ioas, va, length)
        if length % MOCK_PAGE:
            assert rc == -errno.EINVAL, length
        else:
            assert rc == 0, length
            assert f.unmap(ioas, iova, length) == (0, length)


def test_fixed_overlaps_are_eexist(env: tuple[Iommufd, int, int]) -> None:
    f, ioas, base = env
    va = buffer(64 * PAGE)
    assert f.map(ioas, va, 8 * PAGE, iova=base + 8 * PAGE) == (0, base + 8 * PAGE)
    for start, pages in ((8, 8), (10, 2), (6, 4), (14, 4), (4, 16)):
        assert f.map(ioas, va, pages * PAGE, iova=base + start * PAGE)[0] == -errno.EEXIST
    # Touching but not overlapping is fine.
    assert f.map(ioas, va, 8 * PAGE, iova=base)[0] == 0
    assert f.map(ioas, va, 8 * PAGE, iova=base + 16 * PAGE)[0] == 0


def test_fixed_in_reserved_is_einval(env: tuple[Iommufd, int, int]) -> None:
    f, ioas, base = env
    va = buffer(4 * PAGE)
    assert f.test_cmd("ADD_RESERVED", ioas, start=base + 4 * PAGE, length=PAGE)[0] == 0
    assert f.map(ioas, va, 2 * PAGE, iova=base + 3 * PAGE)[0] == -errno.EINVAL
    assert f.map(ioas, va, PAGE, iova=base + 3 * PAGE)[0] == 0


# ---- UNMAP -------------------------------------------------------------------------------
# test_ioas.py has the area, fully-contained and not-atomic unmap checks on every variant.


def test_unmap_checks(core: Any) -> None:
    f = Iommufd(core)
    ioas = f.ioas()
    assert f.unmap(99, 0, PAGE)[0] == -errno.ENOENT
    assert f.unmap(99, 0, U64_MAX)[0] == -errno.ENOENT
    assert f.unmap(ioas, U64_MAX, 1)[0] == -errno.EOVERFLOW
    assert f.unmap(ioas, 1, U64_MAX)[0] == -errno.EOVERFLOW
    assert f.unmap(ioas, PAGE, 0)[0] == -errno.EINVAL
    assert f.unmap(ioas, U64_MAX - 1, 3)[0] == -errno.EOVERFLOW
    assert f.unmap(ioas, U64_MAX - 1, 2)[0] == -errno.ENOENT  # ends exactly at U64_MAX
    # No alignment check: only containment matters.
    assert f.map(ioas, BOGUS_VA, 3, iova=0x1001)[0] == 0
    assert f.unmap(ioas, 0x1000, 0x10) == (0, 3)


# ---- COPY --------------------------------------------------------------------------------


def test_copy_area_and_sweep(env: tuple[Iommufd, int, int]) -> None:
    f, ioas, base = env
    va = buffer(8 * PAGE)
    assert f.map(ioas, va, 4 * PAGE, iova=base)[0] == 0
    assert f.map(ioas, va, 4 * PAGE, iova=base + 4 * PAGE)[0] == 0
    dst = f.ioas()
    # Across the two source areas: one dst area per piece, unmapped piecewise.
    rc, iova = f.copy(dst, ioas, base + 2 * PAGE, 4 * PAGE)
    assert rc == 0
    assert f.unmap(dst, iova, 2 * PAGE) == (0, 2 * PAGE)
    assert f.unmap(dst, iova + 2 * PAGE, 2 * PAGE) == (0, 2 * PAGE)
    # copy_sweep: any range not fully inside the source gives ENOENT.
    outside = ((base - PAGE, 2 * PAGE), (base + 7 * PAGE, 2 * PAGE), (base + 8 * PAGE, 1))
    for start, length in outside:
        assert f.copy(dst, ioas, start, length)[0] == -errno.ENOENT


def test_copy_check_order(core: Any) -> None:
    f = Iommufd(core)
    ioas = f.ioas()
    dst = f.ioas()
    assert f.map(ioas, BOGUS_VA, PAGE, iova=PAGE)[0] == 0
    assert f.copy(dst, ioas, PAGE, PAGE, flags=R | (1 << 5))[0] == -errno.EOPNOTSUPP
    assert f.copy(dst, ioas, U64_MAX, PAGE)[0] == -errno.EOVERFLOW
    assert f.copy(dst, ioas, PAGE, PAGE, flags=0)[0] == -errno.EINVAL
    assert f.copy(dst, 99, PAGE, PAGE)[0] == -errno.ENOENT
    assert f.copy(dst, ioas, PAGE, 0)[0] == -errno.EINVAL
    assert f.copy(dst, ioas, 2 * PAGE, PAGE)[0] == -errno.ENOENT  # source missing first
    assert f.copy(99, ioas, PAGE, PAGE)[0] == -errno.ENOENT
    rc, iova = f.copy(dst, ioas, PAGE, PAGE, dst_iova=8 * PAGE)
    assert (rc, iova) == (0, 8 * PAGE)
    assert f.copy(dst, ioas, PAGE, PAGE, dst_iova=8 * PAGE)[0] == -errno.EEXIST


def test_copy_writeable_from_readonly_is_eperm(core: Any) -> None:
    f = Iommufd(core)
    ioas = f.ioas()
    dst = f.ioas()
    assert f.map(ioas, BOGUS_VA, PAGE, iova=PAGE, flags=R)[0] == 0
    assert f.copy(dst, ioas, PAGE, PAGE, flags=R | W)[0] == -errno.EPERM
    assert f.copy(dst, ioas, PAGE, PAGE, flags=R)[0] == 0


# ---- ALLOW_IOVAS / IOVA_RANGES -------------------------------------------------------------


def test_allow_iovas(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    s = make("iommu_ioas_allow_iovas", ioas_id=ioas, reserved=1)
    assert f.ioctl("IOMMU_IOAS_ALLOW_IOVAS", s) == -errno.EOPNOTSUPP
    assert f.allow(99, []) == -errno.ENOENT
    assert f.allow(ioas, [(0x10000, 0x10000)]) == -errno.EINVAL  # single byte
    assert f.allow(ioas, [(0x20000, 0x10000)]) == -errno.EINVAL
    assert f.allow(ioas, [(0x10000, 0x1FFFF), (0x18000, 0x27FFF)]) == -errno.EINVAL
    bad = make("iommu_ioas_allow_iovas", ioas_id=ioas, num_iovas=1, allowed_iovas=8)
    assert f.ioctl("IOMMU_IOAS_ALLOW_IOVAS", bad) == -errno.EFAULT
    assert f.test_cmd("ADD_RESERVED", ioas, start=0x100000, length=PAGE)[0] == 0
    assert f.allow(ioas, [(0x80000, 0x17FFFF)]) == -errno.EADDRINUSE
    assert f.allow(ioas, [(0x200000, 0x3FFFFF)]) == 0
    # Allowed ranges steer automatic allocation only.
    rc, iova = f.map(ioas, BOGUS_VA, PAGE)
    assert rc == 0
    assert 0x200000 <= iova <= 0x3FFFFF
    assert f.map(ioas, BOGUS_VA, PAGE, iova=0x10000)[0] == 0
    # ...and block later reservations.
    assert f.test_cmd("ADD_RESERVED", ioas, start=0x300000, length=PAGE)[0] == -errno.EADDRINUSE
    assert f.allow(ioas, []) == 0
    assert f.test_cmd("ADD_RESERVED", ioas, start=0x300000, length=PAGE)[0] == 0


def test_iova_ranges(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    # Too small an array: EMSGSIZE, but the real count and alignment come back.
    s = make("iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=0)
    assert f.ioctl("IOMMU_IOAS_IOVA_RANGES", s) == -errno.EMSGSIZE
    assert (s.num_iovas, s.out_iova_alignment) == (1, 1)
    assert f.iova_ranges(ioas) == (0, [(0, U64_MAX)], 1)
    s = make("iommu_ioas_iova_ranges", ioas_id=ioas, reserved=1)
    assert f.ioctl("IOMMU_IOAS_IOVA_RANGES", s) == -errno.EOPNOTSUPP
    s = make("iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=1, allowed_iovas=8)
    assert f.ioctl("IOMMU_IOAS_IOVA_RANGES", s) == -errno.EFAULT
    # The allowed list does not change what is reported.
    assert f.allow(ioas, [(0x200000, 0x3FFFFF)]) == 0
    assert f.iova_ranges(ioas)[1] == [(0, U64_MAX)]
    # ...but it blocks the mock aperture's reservation of [0, start-1].
    assert f.mock_domain(ioas)[0] == -errno.EADDRINUSE
    assert f.allow(ioas, []) == 0

    assert f.mock_domain(ioas)[0] == 0
    assert f.iova_ranges(ioas) == (0, [APERTURE], MOCK_PAGE)
    mid = (APERTURE[0] + APERTURE[1]) // 2 & ~(PAGE - 1)
    assert f.test_cmd("ADD_RESERVED", ioas, start=mid, length=PAGE)[0] == 0
    s = make("iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=1)
    s.allowed_iovas = anon(PAGE)
    assert f.ioctl("IOMMU_IOAS_IOVA_RANGES", s) == -errno.EMSGSIZE
    assert s.num_iovas == 2
    assert f.iova_ranges(ioas)[1] == [(APERTURE[0], mid - 1), (mid + PAGE, APERTURE[1])]


# ---- OPTION ------------------------------------------------------------------------------

RLIMIT = K["IOMMU_OPTION_RLIMIT_MODE"]
HUGE = K["IOMMU_OPTION_HUGE_PAGES"]
GET, SET = K["IOMMU_OPTION_OP_GET"], K["IOMMU_OPTION_OP_SET"]


def test_global_options(core: Any) -> None:
    f = Iommufd(core)
    assert f.option(RLIMIT, GET) == (0, 0)
    assert f.option(RLIMIT, SET, val64=1) == (0, 1)
    assert f.option(RLIMIT, GET) == (0, 1)
    assert f.option(RLIMIT, SET, val64=0) == (0, 0)
    assert f.option(RLIMIT, SET, object_id=1)[0] == -errno.EOPNOTSUPP
    assert f.option(RLIMIT, SET, val64=2)[0] == -errno.EINVAL
    assert f.option(RLIMIT, 2)[0] == -errno.EOPNOTSUPP
    assert f.option(7, GET)[0] == -errno.EOPNOTSUPP
    assert f.option(HUGE, GET, object_id=0)[0] == -errno.ENOENT
    s = make("iommu_option", option_id=RLIMIT, op=GET, reserved=1)
    assert f.ioctl("IOMMU_OPTION", s) == -errno.EOPNOTSUPP
    f.ioas()
    assert f.option(RLIMIT, SET, val64=1)[0] == -errno.EBUSY


def test_rlimit_mode_needs_cap_sys_resource() -> None:
    """Sim only: the tests run as root on the real kernel."""
    assert Iommufd(cap_sys_resource=False).option(RLIMIT, SET, val64=1)[0] == -errno.EPERM


def test_huge_pages_option(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    assert f.option(HUGE, GET, ioas) == (0, 1)
    assert f.option(HUGE, SET, ioas, 2)[0] == -errno.EINVAL
    assert f.option(HUGE, 3, ioas)[0] == -errno.EOPNOTSUPP
    assert f.option(HUGE, SET, ioas, 0)[0] == 0
    assert f.option(HUGE, GET, ioas) == (0, 0)
    assert f.iova_ranges(ioas)[2] == PAGE  # PAGE_SIZE IOPTEs force PAGE_SIZE alignment
    assert f.map(ioas, BOGUS_VA, MOCK_PAGE)[0] == -errno.EINVAL
    assert f.option(HUGE, SET, ioas, 1)[0] == 0
    assert f.iova_ranges(ioas)[2] == 1
    # Disabling needs no domain with areas; misaligned areas refuse the alignment change.
    assert f.map(ioas, BOGUS_VA, 3, iova=0x1001)[0] == 0
    assert f.option(HUGE, SET, ioas, 0)[0] == -errno.EADDRINUSE
    assert f.unmap(ioas, 0, U64_MAX)[0] == 0
    f.mock_domain(ioas)
    assert f.map(ioas, buffer(PAGE), PAGE)[0] == 0
    assert f.option(HUGE, SET, ioas, 0)[0] == -errno.EINVAL


def test_destroy_ioas_with_areas(core: Any) -> None:
    f = Iommufd(core)
    ioas = f.ioas()
    assert f.map(ioas, BOGUS_VA, PAGE)[0] == 0
    assert f.destroy(ioas) == 0
