"""VFIO type1 container ioctls on /dev/iommu (doc §1.7, selftest vfio_compat_*)."""

from __future__ import annotations

import ctypes
import errno
from typing import Any

import pytest

from .raw import MOCK_PAGE, PAGE, U64_MAX, Iommufd, K, S, anon, make

APERTURE = (K["MOCK_APERTURE_START"], K["MOCK_APERTURE_LAST"])
TYPE1, TYPE1V2 = K["VFIO_TYPE1_IOMMU"], K["VFIO_TYPE1v2_IOMMU"]
RD, WR = K["VFIO_DMA_MAP_FLAG_READ"], K["VFIO_DMA_MAP_FLAG_WRITE"]


def vfio_ioas(f: Iommufd, op: str, ioas_id: int = 0) -> tuple[int, int]:
    s = make("iommu_vfio_ioas", op=K["IOMMU_VFIO_IOAS_" + op], ioas_id=ioas_id)
    rc = f.ioctl("IOMMU_VFIO_IOAS", s)
    return rc, int(s.ioas_id)


def map_dma(
    f: Iommufd, vaddr: int, iova: int, size: int, flags: int = RD | WR, argsz: int | None = None
) -> int:
    s = make("vfio_iommu_type1_dma_map", flags=flags, vaddr=vaddr, iova=iova, size=size)
    s.argsz = ctypes.sizeof(s) if argsz is None else argsz
    return f.ioctl("VFIO_IOMMU_MAP_DMA", s)


def unmap_dma(
    f: Iommufd, iova: int, size: int, flags: int = 0, argsz: int | None = None
) -> tuple[int, int]:
    s = make("vfio_iommu_type1_dma_unmap", flags=flags, iova=iova, size=size)
    s.argsz = ctypes.sizeof(s) if argsz is None else argsz
    rc = f.ioctl("VFIO_IOMMU_UNMAP_DMA", s)
    return rc, int(s.size)


def test_simple_ioctls(core: Any) -> None:
    f = Iommufd(core)
    assert f.ioctl("VFIO_GET_API_VERSION", None) == K["VFIO_API_VERSION"]
    for ext, want in (
        (TYPE1, 1),
        (TYPE1V2, 1),
        (K["VFIO_UNMAP_ALL"], 1),
        (K["VFIO_NOIOMMU_IOMMU"], 0),
        (K["VFIO_UPDATE_VADDR"], 0),
        (K["VFIO_TYPE1_NESTING_IOMMU"], 0),
        (1234, 0),
    ):
        assert f.ioctl("VFIO_CHECK_EXTENSION", ext) == want, ext
    assert f.ioctl("VFIO_CHECK_EXTENSION", K["VFIO_DMA_CC_IOMMU"]) == -errno.ENODEV
    assert f.ioctl("VFIO_IOMMU_DIRTY_PAGES", None) == -errno.ENOTTY
    assert f.ioctl("VFIO_GROUP_GET_STATUS", None) == -errno.ENOTTY


def test_compat_without_ioas_is_enodev(core: Any) -> None:
    f = Iommufd(core)
    va = anon(PAGE)
    assert map_dma(f, va, PAGE, PAGE) == -errno.ENODEV
    assert unmap_dma(f, PAGE, PAGE)[0] == -errno.ENODEV
    assert f.ioctl("VFIO_SET_IOMMU", TYPE1V2) == -errno.ENODEV
    info = make("vfio_iommu_type1_info", argsz=ctypes.sizeof(S["vfio_iommu_type1_info"]))
    assert f.ioctl("VFIO_IOMMU_GET_INFO", info) == -errno.ENODEV


def test_vfio_ioas(core: Any) -> None:
    f = Iommufd(core)
    assert vfio_ioas(f, "GET")[0] == -errno.ENODEV
    assert vfio_ioas(f, "SET", 99)[0] == -errno.ENOENT
    ioas = f.ioas()
    assert vfio_ioas(f, "SET", ioas)[0] == 0
    assert vfio_ioas(f, "GET") == (0, ioas)
    s = make("iommu_vfio_ioas", op=7)
    assert f.ioctl("IOMMU_VFIO_IOAS", s) == -errno.EOPNOTSUPP
    s = make("iommu_vfio_ioas", op=K["IOMMU_VFIO_IOAS_GET"], reserved=1)
    assert f.ioctl("IOMMU_VFIO_IOAS", s) == -errno.EOPNOTSUPP
    assert vfio_ioas(f, "CLEAR")[0] == 0
    assert vfio_ioas(f, "GET")[0] == -errno.ENODEV
    # Destroying the compat IOAS forgets it.
    assert vfio_ioas(f, "SET", ioas)[0] == 0
    assert f.destroy(ioas) == 0
    assert vfio_ioas(f, "GET")[0] == -errno.ENODEV


@pytest.fixture(params=[TYPE1V2, TYPE1], ids=["v1v2", "v1v0"])
def compat(request: pytest.FixtureRequest, mock_core: Any) -> tuple[Iommufd, int, int]:
    """vfio_compat_mock_domain: a mock domain on the compat IOAS, SET_IOMMU done."""
    f = Iommufd(mock_core)
    ioas = f.ioas()
    assert f.mock_domain(ioas)[0] == 0
    assert vfio_ioas(f, "SET", ioas)[0] == 0
    assert f.ioctl("VFIO_SET_IOMMU", request.param) == 0
    return f, ioas, request.param


def test_set_iommu_cmd(core: Any) -> None:
    f = Iommufd(core)
    ioas = f.ioas()
    vfio_ioas(f, "SET", ioas)
    assert f.ioctl("VFIO_SET_IOMMU", K["VFIO_SPAPR_TCE_IOMMU"]) == -errno.EINVAL
    assert f.ioctl("VFIO_SET_IOMMU", TYPE1V2) == 0
    assert f.option(K["IOMMU_OPTION_HUGE_PAGES"], K["IOMMU_OPTION_OP_GET"], ioas) == (0, 1)
    assert f.ioctl("VFIO_SET_IOMMU", TYPE1) == 0
    assert f.option(K["IOMMU_OPTION_HUGE_PAGES"], K["IOMMU_OPTION_OP_GET"], ioas) == (0, 0)


def test_option_huge_pages(compat: tuple[Iommufd, int, int]) -> None:
    f, ioas, version = compat
    want = 0 if version == TYPE1 else 1
    assert f.option(K["IOMMU_OPTION_HUGE_PAGES"], K["IOMMU_OPTION_OP_GET"], ioas) == (0, want)


def test_map_cmd_and_unmap_cmd(compat: tuple[Iommufd, int, int]) -> None:
    f, ioas, version = compat
    va = anon(16 * PAGE)
    base = APERTURE[0]
    assert map_dma(f, va, base, PAGE, argsz=31) == -errno.EINVAL
    assert map_dma(f, va, base, PAGE, flags=1 << 5) == -errno.EINVAL
    assert map_dma(f, va, base, 0) == -errno.EINVAL
    assert f.ioctl("VFIO_IOMMU_MAP_DMA", 8) == -errno.EFAULT
    assert map_dma(f, va, base, 8 * PAGE) == 0
    assert map_dma(f, va, base, PAGE) == -errno.EEXIST
    assert unmap_dma(f, base, PAGE, argsz=23)[0] == -errno.EINVAL
    get_bitmap = K["VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP"]
    assert unmap_dma(f, base, PAGE, flags=get_bitmap)[0] == -errno.EINVAL
    assert unmap_dma(f, base, PAGE, flags=K["VFIO_DMA_UNMAP_FLAG_ALL"])[0] == -errno.EINVAL
    # An empty range succeeds through compat (unlike IOAS_UNMAP).
    assert unmap_dma(f, base + 32 * PAGE, PAGE) == (0, 0)
    if version == TYPE1:
        # v1 cuts the mapping: unmapping its middle works.
        assert unmap_dma(f, base + 2 * PAGE, 2 * PAGE) == (0, 2 * PAGE)
        assert unmap_dma(f, base, 8 * PAGE) == (0, 6 * PAGE)
    else:
        # v2 never splits: a partial unmap fails, reporting what it removed (nothing).
        assert unmap_dma(f, base + 2 * PAGE, 2 * PAGE) == (-errno.ENOENT, 0)
        assert unmap_dma(f, base, 8 * PAGE) == (0, 8 * PAGE)
    assert map_dma(f, va, base, 4 * PAGE) == 0
    assert map_dma(f, va, base + 8 * PAGE, 4 * PAGE) == 0
    assert unmap_dma(f, 0, 0, flags=K["VFIO_DMA_UNMAP_FLAG_ALL"]) == (0, 8 * PAGE)
    assert unmap_dma(f, 0, 0, flags=K["VFIO_DMA_UNMAP_FLAG_ALL"]) == (0, 0)
    assert f.unmap(ioas, 0, U64_MAX) == (0, 0)


def test_get_info(compat: tuple[Iommufd, int, int]) -> None:
    f, _ioas, _version = compat
    info_t = S["vfio_iommu_type1_info"]
    # Too small for the caps: argsz tells the full size, no cap_offset.
    info = make("vfio_iommu_type1_info", argsz=ctypes.sizeof(info_t))
    assert f.ioctl("VFIO_IOMMU_GET_INFO", info) == 0
    total = info.argsz
    assert total == 24 + 16 + (16 + 16)  # DMA_AVAIL, then one IOVA range
    assert info.cap_offset == 0
    assert info.flags == K["VFIO_IOMMU_INFO_PGSIZES"] | K["VFIO_IOMMU_INFO_CAPS"]
    # Sub-page IOPTE sizes fold into PAGE_SIZE.
    assert info.iova_pgsizes == PAGE
    buf = (ctypes.c_uint8 * total)()
    hdr = info_t.from_buffer(buf)
    hdr.argsz = total
    assert f.ioctl("VFIO_IOMMU_GET_INFO", buf) == 0
    assert hdr.cap_offset == 24
    avail = S["vfio_iommu_type1_info_dma_avail"].from_buffer(buf, 24)
    assert (avail.header.id, avail.header.version, avail.header.next) == (3, 1, 40)
    assert avail.avail == 0xFFFFFFFF
    iova = S["vfio_iommu_type1_info_cap_iova_range"].from_buffer(buf, 40)
    assert (iova.header.id, iova.header.next, iova.nr_iovas) == (1, 0, 1)
    rng = S["vfio_iova_range"].from_buffer(buf, 56)
    assert (rng.start, rng.end) == APERTURE
    assert f.ioctl("VFIO_IOMMU_GET_INFO", make("vfio_iommu_type1_info", argsz=15)) == -errno.EINVAL
    # The mock IOMMU cannot enforce cache coherency.
    assert f.ioctl("VFIO_CHECK_EXTENSION", K["VFIO_DMA_CC_IOMMU"]) == 0
    assert MOCK_PAGE < PAGE


def test_get_info_without_domain(core: Any) -> None:
    f = Iommufd(core)
    ioas = f.ioas()
    vfio_ioas(f, "SET", ioas)
    info = make("vfio_iommu_type1_info", argsz=24)
    assert f.ioctl("VFIO_IOMMU_GET_INFO", info) == 0
    assert info.iova_pgsizes == U64_MAX & ~(PAGE - 1)
