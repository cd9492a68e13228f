"""The /dev/iommu dispatcher: request numbers, struct sizes, object ids (doc §1.1, §1.4)."""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

import pytest

from .raw import MOCK_PAGE, PAGE, Iommufd, K, S, anon, make

# (request, struct, min_size, sizeof) from the kernel's op table (doc §1.1): min_size is the
# offsetofend of the last mandatory field.
TABLE = [
    ("IOMMU_DESTROY", "iommu_destroy", 8, 8),
    ("IOMMU_IOAS_ALLOC", "iommu_ioas_alloc", 12, 12),
    ("IOMMU_IOAS_ALLOW_IOVAS", "iommu_ioas_allow_iovas", 24, 24),
    ("IOMMU_IOAS_COPY", "iommu_ioas_copy", 40, 40),
    ("IOMMU_IOAS_IOVA_RANGES", "iommu_ioas_iova_ranges", 32, 32),
    ("IOMMU_IOAS_MAP", "iommu_ioas_map", 40, 40),
    ("IOMMU_IOAS_UNMAP", "iommu_ioas_unmap", 24, 24),
    ("IOMMU_OPTION", "iommu_option", 24, 24),
    ("IOMMU_VFIO_IOAS", "iommu_vfio_ioas", 12, 12),
    ("IOMMU_HWPT_ALLOC", "iommu_hwpt_alloc", 24, 48),
    ("IOMMU_GET_HW_INFO", "iommu_hw_info", 32, 40),
    ("IOMMU_HWPT_SET_DIRTY_TRACKING", "iommu_hwpt_set_dirty_tracking", 16, 16),
    ("IOMMU_HWPT_GET_DIRTY_BITMAP", "iommu_hwpt_get_dirty_bitmap", 48, 48),
    ("IOMMU_HWPT_INVALIDATE", "iommu_hwpt_invalidate", 32, 32),
    ("IOMMU_FAULT_QUEUE_ALLOC", "iommu_fault_alloc", 16, 16),
    ("IOMMU_IOAS_MAP_FILE", "iommu_ioas_map_file", 40, 40),
    ("IOMMU_TEST_CMD", "iommu_test_cmd", 68, 72),
]


def raw_call(
    f: Iommufd, req: str, size: int, nbytes: int, fill: int = 0, fill_from: int = 0
) -> tuple[int, bytes]:
    """Call `req` with a zeroed buffer of nbytes whose first u32 says `size`; bytes from
    `fill_from` on hold `fill`. Returns (rc, buffer after the call)."""
    buf = (ctypes.c_uint8 * nbytes)()
    for i in range(fill_from, nbytes):
        buf[i] = fill
    ctypes.c_uint32.from_buffer(buf).value = size
    rc = f.ioctl(req, buf)
    return rc, bytes(buf)


@pytest.mark.parametrize(("req", "struct", "min_size", "size"), TABLE)
def test_cmd_length(
    mock_core: Any, kernel_version: int, req: str, struct: str, min_size: int, size: int
) -> None:
    """Like the selftest's cmd_length: min_size-1 -> EINVAL, a non-zero tail -> E2BIG, a
    zero tail behaves exactly like the exact size."""
    f = Iommufd(mock_core)
    assert ctypes.sizeof(S[struct]) == size
    if req == "IOMMU_IOAS_MAP_FILE" and kernel_version < 613:  # not in the table before 6.13
        for n in (min_size - 1, size, size + 1):
            assert raw_call(f, req, n, size + 1)[0] == -errno.ENOTTY
        return
    assert raw_call(f, req, min_size - 1, size + 1, 0xFF, size)[0] == -errno.EINVAL
    assert raw_call(f, req, size + 1, size + 1, 0xFF, size)[0] == -errno.E2BIG
    assert raw_call(f, req, size + 4096, size + 4096, 0xFF, size + 4095)[0] == -errno.E2BIG
    # Two fresh contexts so that object-creating commands see the same state.
    exact = raw_call(Iommufd(mock_core), req, size, size + 1)[0]
    assert raw_call(Iommufd(mock_core), req, size + 1, size + 1)[0] == exact
    assert raw_call(Iommufd(mock_core), req, size + 4096, size + 4096)[0] == exact


def test_cmd_fail(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    assert f.destroy(0) == -errno.ENOENT
    assert f.ioctl("IOMMU_IOAS_ALLOC", None) == -errno.EFAULT
    assert f.ioctl("IOMMU_DESTROY", 1) == -errno.EFAULT  # a bad pointer, not NULL
    # Unused slots inside the table read the size first, then answer ENOTTY; 0x8d and 0x8e
    # (HWPT_INVALIDATE, FAULT_QUEUE_ALLOC) exist, so an 8-byte struct is too short for them.
    s = make("iommu_destroy", id=1)
    for nr in (0x8D, 0x8E):
        assert f.ioctl(0x3B00 | nr, s) == -errno.EINVAL, hex(nr)
    for nr in (0x90, 0x91, 0x92, 0x99):
        assert f.ioctl(0x3B00 | nr, s) == -errno.ENOTTY, hex(nr)
    assert f.ioctl(0x3B00 | 0x99, None) == -errno.EFAULT
    # Past the table: straight to the compat handler, which knows nothing there.
    assert f.ioctl(0x3B00 | 0xA1, None) == -errno.ENOTTY
    assert f.ioctl(0x3B00 | 0xFF, s) == -errno.ENOTTY


def test_request_must_be_exact(core: Any) -> None:
    f = Iommufd(core)
    s = make("iommu_ioas_alloc")
    # Direction/size bits or another type make it a different command.
    for req in (0xC00C3B81, 0x40003B81, 0x3C81, 0x13B81):
        assert f.ioctl(req, s) == -errno.ENOTTY, hex(req)
    assert f.ioctl(0x3B81, s) == 0


def test_unknown_legacy_numbers_answer_enotty(core: Any) -> None:
    f = Iommufd(core)
    for nr in (0x00, 0x40, 0x7F):
        assert f.ioctl(0x3B00 | nr, None) == -errno.ENOTTY


def test_map_file_needs_613() -> None:
    fd = os.memfd_create("t")
    os.ftruncate(fd, PAGE)
    try:
        for version, expect_enotty in ((612, True), (613, False)):
            f = Iommufd(kernel_version=version)
            ioas = f.ioas()
            rc, _ = f.map_file(ioas, fd, 0, PAGE)
            assert (rc == -errno.ENOTTY) == expect_enotty
            if not expect_enotty:
                assert rc == 0
    finally:
        os.close(fd)


def test_test_cmd_needs_config() -> None:
    assert Iommufd(iommufd_test=False).test_cmd("MOCK_DOMAIN", 1)[0] == -errno.ENOTTY
    assert Iommufd(iommufd_test=True).test_cmd("MOCK_DOMAIN", 1)[0] == -errno.ENOENT


def test_ids_lowest_free_first(core: Any) -> None:
    f = Iommufd(core)
    assert [f.ioas() for _ in range(4)] == [1, 2, 3, 4]
    assert f.destroy(2) == 0
    assert f.destroy(3) == 0
    assert f.ioas() == 2
    assert f.ioas() == 3
    assert f.ioas() == 5
    assert f.destroy(2) == 0
    assert f.destroy(2) == -errno.ENOENT


def test_one_namespace_and_ebusy(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    rc, stdev, hwpt, idev = f.mock_domain(ioas)
    assert rc == 0
    assert (stdev, idev, hwpt) == (2, 3, 4)  # creation order: stdev, idev, auto hwpt
    assert f.destroy(ioas) == -errno.EBUSY  # the hwpt uses it
    assert f.destroy(hwpt) == -errno.EBUSY  # the device is attached
    assert f.destroy(idev) == -errno.EBUSY  # bound
    assert f.destroy(stdev) == 0  # unbinds; the auto hwpt goes with its last device
    assert f.destroy(hwpt) == -errno.ENOENT
    assert f.destroy(idev) == -errno.ENOENT
    assert f.destroy(ioas) == 0


def test_wrong_type_is_enoent(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    _, stdev, hwpt, idev = f.mock_domain(ioas)
    for obj in (stdev, hwpt, idev, 99):
        assert f.map(obj, 1 << 31, PAGE)[0] == -errno.ENOENT


def test_reply_copies_min_of_sizes(mock_core: Any) -> None:
    """HWPT_ALLOC with the pre-6.11 size (40): bytes past 40 are neither read nor written."""
    f = Iommufd(mock_core)
    ioas = f.ioas()
    _, _, _, idev = f.mock_domain(ioas)
    buf = (ctypes.c_uint8 * 56)(*([0] * 40 + [0xAB] * 16))
    s = S["iommu_hwpt_alloc"].from_buffer(buf)
    s.size, s.dev_id, s.pt_id = 40, idev, ioas
    assert f.ioctl("IOMMU_HWPT_ALLOC", buf) == 0
    assert s.out_hwpt_id == 5
    assert bytes(buf[40:]) == b"\xab" * 16


def test_smaller_size_is_zero_extended(mock_core: Any) -> None:
    """GET_HW_INFO at its min_size (32): out_capabilities (offset 32) is not part of the
    user's struct, so it is neither required nor written."""
    f = Iommufd(mock_core)
    ioas = f.ioas()
    _, _, _, idev = f.mock_domain(ioas)
    buf = (ctypes.c_uint8 * 48)(*([0] * 32 + [0xCD] * 16))
    s = S["iommu_hw_info"].from_buffer(buf)
    s.size, s.dev_id = 32, idev
    assert f.ioctl("IOMMU_GET_HW_INFO", buf) == 0
    assert s.out_data_type == K["IOMMU_HW_INFO_TYPE_SELFTEST"]
    assert bytes(buf[32:]) == b"\xcd" * 16


def test_close_releases_everything(mock_core: Any) -> None:
    k = mock_core
    f = Iommufd(k)
    ioas = f.ioas()
    va = anon(4 * PAGE)
    f.mock_domain(ioas)
    assert f.map(ioas, va, 4 * PAGE)[0] == 0
    f.close()
    # A second context of the same kernel starts from id 1 again.
    assert Iommufd(k).ioas() == 1
    assert MOCK_PAGE == PAGE // 2


def _readonly_struct(name: str, **fields: int) -> tuple[int, object]:
    """The struct in a read-only page: the kernel can read it but not answer."""
    import mmap

    from .raw import protect

    page = anon(PAGE)
    s = S[name].from_address(page)
    ctypes.memmove(page, bytes(make(name, **fields)), ctypes.sizeof(S[name]))
    protect(page, PAGE, mmap.PROT_READ)
    return page, s


def test_reply_fault_keeps_the_side_effect(core: Any) -> None:
    f = Iommufd(core)
    ioas = f.ioas()
    page, _ = _readonly_struct(
        "iommu_ioas_map",
        ioas_id=ioas,
        user_va=1 << 31,
        length=PAGE,
        flags=K["IOMMU_IOAS_MAP_READABLE"],
    )
    assert f.ioctl("IOMMU_IOAS_MAP", page) == -errno.EFAULT
    # The mapping was made anyway; only the reply was lost.
    assert f.unmap(ioas, 0, (1 << 64) - 1) == (0, PAGE)


def test_alloc_reply_fault_creates_nothing(core: Any) -> None:
    f = Iommufd(core)
    page, _ = _readonly_struct("iommu_ioas_alloc")
    assert f.ioctl("IOMMU_IOAS_ALLOC", page) == -errno.EFAULT
    assert f.ioas() == 1
    assert f.ioctl("IOMMU_IOAS_ALLOC", make("iommu_ioas_alloc", flags=1)) == -errno.EOPNOTSUPP


def test_hwpt_invalidate(mock_core: Any, kernel_version: int) -> None:
    """No nested HWPT or vIOMMU exists, so only the argument checks and lookups answer; the
    entries done (0) are written back whatever the result."""
    f = Iommufd(mock_core)
    ioas = f.ioas()
    _, _, hwpt, _ = f.mock_domain(ioas)

    def inv(**kw: int) -> tuple[int, int]:
        s = make("iommu_hwpt_invalidate", entry_num=5, **kw)
        rc = f.ioctl("IOMMU_HWPT_INVALIDATE", s)
        return rc, int(s.entry_num)

    assert inv(reserved=1, hwpt_id=hwpt) == (-errno.EOPNOTSUPP, 0)
    assert inv(hwpt_id=hwpt, entry_len=8) == (-errno.EINVAL, 0)  # entries but no data
    assert inv(hwpt_id=99, entry_len=8, data_uptr=8) == (-errno.ENOENT, 0)
    # Not nested: 6.12 (checked on 6.12.95) looks the id up as a nested HWPT first.
    not_nested = errno.EINVAL if kernel_version >= 613 else errno.ENOENT
    assert inv(hwpt_id=hwpt, entry_len=8, data_uptr=8) == (-not_nested, 0)
    g = Iommufd(kernel_version=612)
    gi = g.ioas()
    _, _, ghwpt, _ = g.mock_domain(gi)
    s = make("iommu_hwpt_invalidate", hwpt_id=ghwpt, entry_num=5, entry_len=8)
    assert g.ioctl("IOMMU_HWPT_INVALIDATE", s) == -errno.ENOENT
    s.reserved = 1
    assert g.ioctl("IOMMU_HWPT_INVALIDATE", s) == -errno.EOPNOTSUPP


def test_fault_queue_alloc(core: Any) -> None:
    k = core
    f = Iommufd(k)
    s = make("iommu_fault_alloc", flags=1)
    assert f.ioctl("IOMMU_FAULT_QUEUE_ALLOC", s) == -errno.EOPNOTSUPP
    s = make("iommu_fault_alloc")
    assert f.ioctl("IOMMU_FAULT_QUEUE_ALLOC", s) == 0
    fault, fd = int(s.out_fault_id), int(s.out_fault_fd)
    assert fault == 1
    assert fd > f.fd
    # Not a positional file: the queue is for read(2)/write(2) only.
    assert k.pread(fd, 64, 0) == -errno.ESPIPE
    assert k.pread(fd, 64, 8) == -errno.ESPIPE
    assert k.pwrite(fd, bytes(8), 0) == -errno.ESPIPE
    assert f.destroy(fault) == -errno.EBUSY  # the fd holds it
    assert k.close(fd) == 0
    assert f.destroy(fault) == 0


def test_hwpt_alloc_fault_id_by_version() -> None:
    # HWPT_ALLOC can name a fault queue from 6.13; 6.12 allowed that for nested HWPTs only.
    fault_flag = K["IOMMU_HWPT_FAULT_ID_VALID"]
    for version, expect in ((612, -errno.EOPNOTSUPP), (613, 0)):
        g = Iommufd(kernel_version=version)
        ioas = g.ioas()
        _, _, _, idev = g.mock_domain(ioas)
        s = make("iommu_fault_alloc")
        assert g.ioctl("IOMMU_FAULT_QUEUE_ALLOC", s) == 0
        h = make(
            "iommu_hwpt_alloc",
            dev_id=idev,
            pt_id=ioas,
            flags=fault_flag,
            fault_id=s.out_fault_id + 100,
        )
        assert g.ioctl("IOMMU_HWPT_ALLOC", h) == (expect or -errno.ENOENT)
        h.fault_id = s.out_fault_id
        assert g.ioctl("IOMMU_HWPT_ALLOC", h) == expect
        if expect == 0:
            assert g.k.close(int(s.out_fault_fd)) == 0
            assert g.destroy(s.out_fault_id) == -errno.EBUSY  # the HWPT uses it
            assert g.destroy(h.out_hwpt_id) == 0
            assert g.destroy(s.out_fault_id) == 0
