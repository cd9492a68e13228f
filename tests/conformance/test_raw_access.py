"""The selftest ops behind Linux's own iommufd selftests: MD_CHECK_REFS (pins per page),
SET_TEMP_MEMORY_LIMIT and the access objects (CREATE_ACCESS, ACCESS_RW, ACCESS_PAGES,
DESTROY_ACCESS_PAGES, ACCESS_REPLACE_IOAS, unmap notification), with 6.12's errnos."""

from __future__ import annotations

import ctypes
import errno
from typing import Any

from .raw import PAGE, Iommufd, K, anon

APERTURE = K["MOCK_APERTURE_START"]
PIN = K["MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES"]


def refs(f: Iommufd, va: int, length: int, n: int) -> int:
    return f.test_cmd("MD_CHECK_REFS", uptr=va, length=length, refs=n)[0]


def create_access(f: Iommufd, ioas: int, flags: int = 0) -> tuple[int, int]:
    rc, s = f.test_cmd("CREATE_ACCESS", ioas, flags=flags)
    return rc, s.u.create_access.out_access_fd


def test_check_refs_counts_pins_per_page(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    va = anon(4 * PAGE)
    assert f.map(ioas, va, 4 * PAGE, APERTURE)[0] == 0
    assert refs(f, va, 4 * PAGE, 0) == 0  # no domain: nothing is pinned yet
    assert f.mock_domain(ioas)[0] == 0
    assert refs(f, va, 4 * PAGE, 1) == 0
    assert refs(f, va, 4 * PAGE, 0) == -errno.EIO
    # A copy shares the pages: still one pin per page.
    assert f.copy(ioas, ioas, APERTURE, 4 * PAGE)[0] == 0
    assert refs(f, va, 4 * PAGE, 1) == 0
    assert refs(f, va + 1, PAGE, 1) == -errno.EINVAL
    assert refs(f, va, PAGE + 1, 1) == -errno.EINVAL
    f.close()
    g = Iommufd(f.k)  # closing the context unpinned everything
    assert refs(g, va, 4 * PAGE, 0) == 0


def test_temp_memory_limit(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    assert f.test_cmd("SET_TEMP_MEMORY_LIMIT", limit=11)[0] == -errno.EINVAL
    assert f.test_cmd("SET_TEMP_MEMORY_LIMIT", limit=12)[0] == 0
    assert f.test_cmd("SET_TEMP_MEMORY_LIMIT", limit=65536)[0] == 0


def test_access_rw_pages_and_unmap_notification(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    va = anon(4 * PAGE)
    ctypes.memset(va, 0x5A, 4 * PAGE)
    assert f.map(ioas, va, 4 * PAGE, APERTURE)[0] == 0
    assert create_access(f, ioas, flags=1 << 5)[0] == -errno.EOPNOTSUPP
    rc, afd = create_access(f, ioas, PIN)
    assert rc == 0
    assert f.destroy(ioas) == -errno.EBUSY  # the access holds the IOAS

    buf = (ctypes.c_ubyte * 64)()
    rc, _ = f.test_cmd("ACCESS_RW", afd, iova=APERTURE + 10, length=64, uptr=ctypes.addressof(buf))
    assert rc == 0 and bytes(buf) == b"\x5a" * 64
    buf[0] = 0x11
    rc, _ = f.test_cmd(
        "ACCESS_RW",
        afd,
        iova=APERTURE + 10,
        length=1,
        uptr=ctypes.addressof(buf),
        flags=K["MOCK_ACCESS_RW_WRITE"],
    )
    assert rc == 0 and ctypes.c_ubyte.from_address(va + 10).value == 0x11
    assert (
        f.test_cmd(
            "ACCESS_RW", afd, iova=APERTURE + 4 * PAGE, length=1, uptr=ctypes.addressof(buf)
        )[0]
        == -errno.ENOENT
    )
    assert (
        f.test_cmd("ACCESS_RW", 0x7FFF, iova=APERTURE, length=1, uptr=ctypes.addressof(buf))[0]
        == -errno.EBADFD
    )

    rc, s = f.test_cmd("ACCESS_PAGES", afd, iova=APERTURE + PAGE, length=2 * PAGE, uptr=va + PAGE)
    assert rc == 0
    item = s.u.access_pages.out_access_pages_id
    assert refs(f, va + PAGE, 2 * PAGE, 1) == 0 and refs(f, va, PAGE, 0) == 0
    # Pinned pages must be the ones at uptr.
    assert (
        f.test_cmd("ACCESS_PAGES", afd, iova=APERTURE, length=PAGE, uptr=va + PAGE)[0]
        == -errno.EBADE
    )
    # The unmap asks the access to unpin, then succeeds.
    assert f.unmap(ioas, APERTURE, 4 * PAGE)[0] == 0
    assert refs(f, va, 4 * PAGE, 0) == 0
    assert f.test_cmd("DESTROY_ACCESS_PAGES", afd, access_pages_id=item)[0] == -errno.ENOENT

    ioas2 = f.ioas()
    assert f.test_cmd("ACCESS_REPLACE_IOAS", afd, ioas_id=ioas2)[0] == 0
    assert f.destroy(ioas) == 0
    assert f.test_cmd("ACCESS_REPLACE_IOAS", afd, ioas_id=999)[0] == -errno.ENOENT
    assert f.k.close(afd) == 0
    assert f.destroy(ioas2) == 0
