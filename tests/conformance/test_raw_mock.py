"""Mock domains, HWPTs, device attach/replace, pinning and accounting, GET_HW_INFO,
MAP_FILE (doc §2.4, §2.7, §2.9, §2.10, §3.2)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from typing import Any

from fastmap import _core

from .raw import MOCK_PAGE, PAGE, U64_MAX, Iommufd, K, R, S, W, anon, make, protect, unmap

APERTURE = (K["MOCK_APERTURE_START"], K["MOCK_APERTURE_LAST"])
NO_DIRTY = K["MOCK_FLAGS_DEVICE_NO_DIRTY"]
DIRTY = K["IOMMU_HWPT_ALLOC_DIRTY_TRACKING"]


def fill(va: int, length: int, seed: int) -> None:
    ctypes.memmove(va, bytes((seed + i * 7 + i // 251) & 0xFF for i in range(length)), length)


def check_map(f: Iommufd, hwpt: int, iova: int, length: int, uptr: int) -> int:
    return f.test_cmd("MD_CHECK_MAP", hwpt, iova=iova, length=length, uptr=uptr)[0]


def test_mock_domain_ids_ranges_alignment(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    assert f.mock_domain(ioas) == (0, 2, 4, 3)
    assert f.iova_ranges(ioas) == (0, [APERTURE], MOCK_PAGE)
    assert f.mock_domain(ioas) == (0, 5, 4, 6)  # the second device shares the auto HWPT
    assert f.mock_domain(99)[0] == -errno.ENOENT
    assert f.mock_domain(ioas, dev_flags=1 << 7)[0] == -errno.EINVAL
    # Failed creations leave no ids behind.
    assert f.ioas() == 7


def test_map_pins_with_a_domain(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    _, _, hwpt, _ = f.mock_domain(ioas)
    va = anon(4 * PAGE)
    fill(va, 4 * PAGE, 3)
    rc, iova = f.map(ioas, va, 4 * PAGE)
    assert rc == 0
    assert check_map(f, hwpt, iova, 4 * PAGE, va) == 0
    assert check_map(f, hwpt, iova + MOCK_PAGE, PAGE, va) == -errno.EINVAL
    assert check_map(f, hwpt, iova, 4 * PAGE + MOCK_PAGE, va) == -errno.EINVAL  # past the map
    assert check_map(f, hwpt, iova + 1, MOCK_PAGE, va) == -errno.EINVAL
    assert check_map(f, 99, iova, MOCK_PAGE, va) == -errno.ENOENT
    assert check_map(f, ioas, iova, MOCK_PAGE, va) == -errno.ENOENT
    # basic: a munmapped buffer cannot be pinned.
    gone = anon(2 * PAGE)
    unmap(gone, 2 * PAGE)
    assert f.map(ioas, gone, 2 * PAGE)[0] == -errno.EFAULT
    # A read-only buffer pins for reading only.
    ro = anon(PAGE)
    protect(ro, PAGE, mmap.PROT_READ)
    assert f.map(ioas, ro, PAGE, flags=R | W)[0] == -errno.EFAULT
    assert f.map(ioas, ro, PAGE, flags=R)[0] == 0


def test_attach_pins_existing_areas_or_fails_cleanly(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    good = anon(2 * PAGE)
    fill(good, 2 * PAGE, 9)
    assert f.map(ioas, good, 2 * PAGE, iova=APERTURE[0])[0] == 0
    gone = anon(PAGE)
    unmap(gone, PAGE)
    assert f.map(ioas, gone, PAGE, iova=APERTURE[0] + 4 * PAGE)[0] == 0  # not checked yet
    assert f.mock_domain(ioas)[0] == -errno.EFAULT  # fork_gone-like
    assert f.iova_ranges(ioas) == (0, [(0, U64_MAX)], 1)  # nothing left behind
    assert f.unmap(ioas, APERTURE[0] + 4 * PAGE, PAGE)[0] == 0
    rc, stdev, hwpt, _ = f.mock_domain(ioas)
    assert (rc, stdev, hwpt) == (0, 2, 4)  # the failed attempt consumed no ids
    assert check_map(f, hwpt, APERTURE[0], 2 * PAGE, good) == 0


def test_attach_reservation_and_alignment_conflicts(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    assert f.map(ioas, 1 << 31, PAGE, iova=PAGE)[0] == 0  # below the mock aperture
    assert f.mock_domain(ioas)[0] == -errno.EADDRINUSE
    assert f.unmap(ioas, 0, U64_MAX)[0] == 0
    # ioas_align_change: a byte-granular area cannot live under a 2048-byte domain.
    assert f.map(ioas, 1 << 31, 100, iova=APERTURE[0])[0] == 0
    assert f.mock_domain(ioas)[0] == -errno.EADDRINUSE
    assert f.unmap(ioas, 0, U64_MAX)[0] == 0
    assert f.map(ioas, (1 << 31) + 1024, MOCK_PAGE, iova=APERTURE[0])[0] == 0  # page offset
    assert f.mock_domain(ioas)[0] == -errno.EADDRINUSE
    assert f.unmap(ioas, 0, U64_MAX)[0] == 0
    assert f.mock_domain(ioas)[0] == 0


def test_hwpt_alloc_check_order_and_enforce_dirty(mock_core: Any, kernel_version: int) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    _, _, _, idev = f.mock_domain(ioas)

    def alloc(**kw: int) -> int:
        s = make("iommu_hwpt_alloc", dev_id=idev, pt_id=ioas)
        for k, v in kw.items():
            setattr(s, k, v)
        return f.ioctl("IOMMU_HWPT_ALLOC", s)

    assert alloc(reserved=1, dev_id=99) == -errno.EOPNOTSUPP
    assert alloc(data_len=8, dev_id=99) == -errno.EINVAL
    assert alloc(data_type=1, dev_id=99) == -errno.EINVAL
    assert alloc(dev_id=99) == -errno.ENOENT
    assert alloc(dev_id=ioas) == -errno.ENOENT
    assert alloc(pt_id=99, flags=1 << 9) == -errno.EINVAL
    assert alloc(pt_id=idev) == -errno.EINVAL
    assert alloc(flags=1 << 9) == -errno.EOPNOTSUPP
    # 6.13 looks for the (missing) queue; 6.12 allows a fault queue on nested HWPTs only.
    no_queue = errno.ENOENT if kernel_version >= 613 else errno.EOPNOTSUPP
    assert alloc(flags=K["IOMMU_HWPT_FAULT_ID_VALID"]) == -no_queue
    assert alloc(data_type=1, data_len=8) == -errno.EOPNOTSUPP
    # enforce_dirty: a NO_DIRTY device can neither get nor join a dirty-tracking HWPT.
    _, stdev2, _, idev2 = f.mock_domain(ioas, dev_flags=NO_DIRTY)
    assert f.hwpt_alloc(idev2, ioas, DIRTY)[0] == -errno.EOPNOTSUPP
    rc, dirty_hwpt = f.hwpt_alloc(idev, ioas, DIRTY)
    assert rc == 0
    assert f.mock_domain(dirty_hwpt, dev_flags=NO_DIRTY)[0] == -errno.EINVAL
    assert f.mock_domain(dirty_hwpt)[0] == 0
    assert f.destroy(stdev2) == 0


def test_user_hwpt_lifetime_and_replace(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    rc, stdev, auto_hwpt, idev = f.mock_domain(ioas)
    rc, hwpt = f.hwpt_alloc(idev, ioas)
    assert (rc, hwpt) == (0, 5)
    va = anon(2 * PAGE)
    fill(va, 2 * PAGE, 1)
    rc, iova = f.map(ioas, va, 2 * PAGE)
    assert check_map(f, hwpt, iova, 2 * PAGE, va) == 0  # a user HWPT is filled too
    # Replace the auto HWPT by the user one: the auto HWPT dies with its last device.
    rc, s = f.test_cmd("MOCK_DOMAIN_REPLACE", stdev, pt_id=hwpt)
    assert (rc, s.u.mock_domain_replace.pt_id) == (0, hwpt)
    assert f.destroy(auto_hwpt) == -errno.ENOENT
    assert f.destroy(hwpt) == -errno.EBUSY
    assert f.test_cmd("MOCK_DOMAIN_REPLACE", idev, pt_id=hwpt)[0] == -errno.ENOENT
    # Back to the IOAS: a new auto HWPT (the user one is never picked automatically).
    rc, s = f.test_cmd("MOCK_DOMAIN_REPLACE", stdev, pt_id=ioas)
    assert rc == 0
    new_auto = s.u.mock_domain_replace.pt_id
    assert new_auto != hwpt  # the freed id 4 is reused for the new auto HWPT
    assert f.destroy(stdev) == 0
    assert f.destroy(new_auto) == -errno.ENOENT
    # The user HWPT outlives its devices and holds the IOAS.
    assert f.destroy(ioas) == -errno.EBUSY
    assert f.destroy(hwpt) == 0
    assert f.destroy(ioas) == 0


def test_get_hw_info(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    _, _, _, idev = f.mock_domain(ioas)
    _, _, _, idev_nd = f.mock_domain(ioas, dev_flags=NO_DIRTY)
    data = (ctypes.c_uint8 * 32)(*([0xEE] * 32))
    s = make("iommu_hw_info", dev_id=idev, data_len=32, data_uptr=ctypes.addressof(data))
    assert f.ioctl("IOMMU_GET_HW_INFO", s) == 0
    assert s.out_data_type == 0xFEEDBEEF
    assert s.data_len == 8
    assert s.out_capabilities == K["IOMMU_HW_CAP_DIRTY_TRACKING"]
    assert bytes(data) == (0).to_bytes(4, "little") + (0xDEADBEEF).to_bytes(4, "little") + bytes(24)
    # A short buffer gets the head; data_len 0 just asks for type and length.
    small = (ctypes.c_uint8 * 6)(*([0xEE] * 6))
    s = make("iommu_hw_info", dev_id=idev_nd, data_len=6, data_uptr=ctypes.addressof(small))
    assert f.ioctl("IOMMU_GET_HW_INFO", s) == 0
    assert (s.data_len, s.out_capabilities) == (8, 0)
    assert bytes(small) == bytes(4) + b"\xef\xbe"
    # out_max_pasid_log2 is an output: whatever comes in, 0 (no PASID) goes back.
    s = make("iommu_hw_info", dev_id=idev, out_max_pasid_log2=7)
    assert f.ioctl("IOMMU_GET_HW_INFO", s) == 0
    assert (s.data_len, s.out_max_pasid_log2) == (8, 0)
    cases = (
        ({"flags": 1}, errno.EOPNOTSUPP),
        ({"reserved": (0, 1, 0)}, errno.EOPNOTSUPP),
        ({"dev_id": ioas}, errno.ENOENT),
        ({"data_len": 8, "data_uptr": 8}, errno.EFAULT),
    )
    for kw, err in cases:
        s = make("iommu_hw_info", **({"dev_id": idev} | kw))
        assert f.ioctl("IOMMU_GET_HW_INFO", s) == -err, kw


def test_rlimit_accounting() -> None:
    k = _core.SimKernel(_config(cap_ipc_lock=False, rlimit_memlock=16 * PAGE))
    f = Iommufd(k)
    ioas = f.ioas()
    va = anon(32 * PAGE)
    # No domain: nothing pinned or charged.
    assert f.map(ioas, va, 12 * PAGE, iova=APERTURE[0])[0] == 0
    assert f.map(ioas, va, 12 * PAGE, iova=APERTURE[0] + 16 * PAGE)[0] == 0
    assert f.mock_domain(ioas)[0] == -errno.ENOMEM  # attaching pins both: 24 pages
    assert f.unmap(ioas, 0, U64_MAX)[0] == 0
    f.mock_domain(ioas)
    rc, iova = f.map(ioas, va, 12 * PAGE)
    assert rc == 0
    assert f.map(ioas, va + 12 * PAGE, 8 * PAGE)[0] == -errno.ENOMEM
    # COPY shares the pages: no second charge, even in another IOAS with a domain.
    dst = f.ioas()
    f.mock_domain(dst)
    assert f.copy(dst, ioas, iova, 12 * PAGE)[0] == 0
    assert f.map(ioas, va + 12 * PAGE, 4 * PAGE)[0] == 0
    assert f.map(ioas, va + 16 * PAGE, PAGE)[0] == -errno.ENOMEM
    # Per-user accounting is shared with other contexts of the same user.
    g = Iommufd(k)
    gi = g.ioas()
    g.mock_domain(gi)
    assert g.map(gi, va, PAGE)[0] == -errno.ENOMEM
    # ...per-mm accounting is a separate budget.
    h = Iommufd(k)
    assert h.option(K["IOMMU_OPTION_RLIMIT_MODE"], K["IOMMU_OPTION_OP_SET"], val64=1)[0] == 0
    hi = h.ioas()
    h.mock_domain(hi)
    assert h.map(hi, va, 8 * PAGE)[0] == 0
    # Unmapping uncharges.
    assert f.unmap(ioas, 0, U64_MAX)[0] == 0
    assert f.unmap(dst, 0, U64_MAX)[0] == 0
    assert g.map(gi, va, 16 * PAGE)[0] == 0


def _config(**kw: object) -> _core.SimConfig:
    cfg = _core.SimConfig()
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_map_file(mock_core: Any, kernel_version: int) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    fd = os.memfd_create("fastmap-test")
    if kernel_version < 613:  # IOMMU_IOAS_MAP_FILE came with 6.13
        os.ftruncate(fd, PAGE)
        assert f.map_file(ioas, fd, 0, PAGE)[0] == -errno.ENOTTY
        os.close(fd)
        return
    ro = -1
    try:
        os.ftruncate(fd, 8 * PAGE)
        user = mmap.mmap(fd, 8 * PAGE)
        user[:] = os.urandom(8 * PAGE)
        uva = ctypes.addressof(ctypes.c_char.from_buffer(user))
        # No domain: recorded only; the allocator's hint is the file offset.
        rc, iova = f.map_file(ioas, fd, 0, 3 * PAGE)
        assert (rc, iova) == (0, 0x4000)
        assert f.unmap(ioas, 0, U64_MAX)[0] == 0
        _, _, hwpt, _ = f.mock_domain(ioas)
        rc, iova = f.map_file(ioas, fd, PAGE, 4 * PAGE)
        assert rc == 0
        # The domain maps our own MAP_SHARED mapping of the same pages.
        assert check_map(f, hwpt, iova, 4 * PAGE, uva + PAGE) == 0
        assert check_map(f, hwpt, iova, 4 * PAGE, uva) == -errno.EINVAL
        assert f.map_file(ioas, 1 << 20, 0, PAGE)[0] == -errno.EBADF
        assert f.map_file(ioas, -1, 0, PAGE)[0] == -errno.EBADF
        assert f.map_file(ioas, fd, 0, 0)[0] == -errno.EINVAL
        assert f.map_file(ioas, fd, U64_MAX - 10, 100)[0] == -errno.EOVERFLOW
        assert f.map_file(99, fd, 0, PAGE)[0] == -errno.ENOENT
        assert f.map_file(ioas, fd, 8 * PAGE, PAGE)[0] == -errno.EFAULT  # past EOF
        ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        assert f.map_file(ioas, ro, 0, PAGE, flags=R | W)[0] == -errno.EPERM
        assert f.map_file(ioas, ro, 0, PAGE, flags=R)[0] == 0
        s = make("iommu_ioas_map_file", ioas_id=ioas, fd=fd, length=PAGE, flags=1 << 4 | R)
        assert f.ioctl("IOMMU_IOAS_MAP_FILE", s) == -errno.EOPNOTSUPP
        del user
    finally:
        os.close(fd)
        if ro >= 0:
            os.close(ro)
    # The mapping survives the caller closing its fd.
    assert check_map(f, hwpt, iova, MOCK_PAGE, uva + PAGE) in (0, -errno.EFAULT)
    assert S["iommu_ioas_map_file"] is not None
