"""Legacy VFIO: the /dev/vfio/vfio container with the Type1 backend and /dev/vfio/<N> groups
(drivers/vfio/container.c, group.c, vfio_iommu_type1.c; reference §1.6 and §2.11)."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from fastmap._libc import libc
from tests.facilities import only_on_sim

from .raw import EDU_DMA_BUF, PAGE, Buf, Dev, K, S, Type1, close, ioctl, make, sim_kernel, track

MIB, GIB = 1 << 20, 1 << 30
PAGE_MASK = ((1 << 64) - 1) & ~(PAGE - 1)  # virtio-iommu's page sizes: any multiple of a page


def behind_virtio_iommu(k: Any) -> bool:
    """Whether the real kernel's devices sit behind virtio-iommu (the simulator models
    VT-d; the VM tier boots with either)."""
    if k.name != "real":
        return False
    iommus = os.listdir("/sys/class/iommu") if os.path.isdir("/sys/class/iommu") else []
    return not any(name.startswith("dmar") for name in iommus)


R, W = K["VFIO_DMA_MAP_FLAG_READ"], K["VFIO_DMA_MAP_FLAG_WRITE"]
START = K["VFIO_IOMMU_DIRTY_PAGES_FLAG_START"]
STOP = K["VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP"]
GET_BITMAP = K["VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP"]
VTD_RANGES = [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]


@pytest.fixture()
def mem() -> Iterator[Buf]:
    b = Buf(16 * MIB, align=2 * MIB)
    yield b
    b.free()


def one_device(**config: Any) -> tuple[Any, dict[str, Any]]:
    k = sim_kernel(**config)
    return k, k.machine.add_pci_device()


def status(k: Any, gfd: int) -> int:
    s = make("vfio_group_status")
    assert ioctl(k, gfd, "VFIO_GROUP_GET_STATUS", s) == 0
    return int(s.flags)


def get_info(t: Type1, argsz: int = 4096) -> tuple[int, Any, dict[int, bytes], bytes]:
    """GET_INFO with a big buffer: (rc, info, {cap id: cap bytes}, raw buffer)."""
    raw = (ctypes.c_uint8 * max(argsz, ctypes.sizeof(S["vfio_iommu_type1_info"])))()
    info = S["vfio_iommu_type1_info"].from_buffer(raw)
    info.argsz = argsz
    rc = t.ioctl("VFIO_IOMMU_GET_INFO", raw)
    data = bytes(raw)
    caps: dict[int, bytes] = {}
    off = info.cap_offset if info.flags & K["VFIO_IOMMU_INFO_CAPS"] else 0
    while off and off < argsz:
        cid, _ver, nxt = struct.unpack_from("<HHI", data, off)
        end = nxt if nxt else argsz
        caps[cid] = data[off:end]
        off = nxt
    return rc, info, caps, data


def iova_ranges(cap: bytes) -> list[tuple[int, int]]:
    (nr,) = struct.unpack_from("<I", cap, 8)
    return [struct.unpack_from("<QQ", cap, 16 + 16 * i) for i in range(nr)]


# -- container and group setup ------------------------------------------------------------
def test_container_before_iommu(core: Any, pci: dict[str, Any]) -> None:
    k, info = core, pci
    cfd = track(k, k.open("/dev/vfio/vfio", os.O_RDWR))
    assert ioctl(k, cfd, "VFIO_GET_API_VERSION", None) == 0
    ext = {
        n: ioctl(k, cfd, "VFIO_CHECK_EXTENSION", K[n])
        for n in (
            "VFIO_TYPE1_IOMMU",
            "VFIO_TYPE1v2_IOMMU",
            "VFIO_UNMAP_ALL",
            "VFIO_SPAPR_TCE_IOMMU",
            "VFIO_NOIOMMU_IOMMU",
            "VFIO_DMA_CC_IOMMU",
            "VFIO_UPDATE_VADDR",
            "VFIO_EEH",
        )
    }
    assert ext == {
        "VFIO_TYPE1_IOMMU": 1,
        "VFIO_TYPE1v2_IOMMU": 1,
        "VFIO_UNMAP_ALL": 1,
        "VFIO_SPAPR_TCE_IOMMU": 0,
        "VFIO_NOIOMMU_IOMMU": 0,
        "VFIO_DMA_CC_IOMMU": 0,
        "VFIO_UPDATE_VADDR": 0,
        "VFIO_EEH": 0,
    }
    # SET_IOMMU needs a group; the backend ioctls need SET_IOMMU.
    assert ioctl(k, cfd, "VFIO_SET_IOMMU", K["VFIO_TYPE1v2_IOMMU"]) == -errno.EINVAL
    m = make("vfio_iommu_type1_dma_map", flags=3, vaddr=0x10000, iova=0, size=PAGE)
    assert ioctl(k, cfd, "VFIO_IOMMU_MAP_DMA", m) == -errno.EINVAL
    gfd = track(k, k.open(info["group_path"], os.O_RDWR))
    assert k.open(info["group_path"], os.O_RDWR) == -errno.EBUSY  # one open per group
    assert status(k, gfd) == K["VFIO_GROUP_FLAGS_VIABLE"]
    name = ctypes.create_string_buffer(info["bdf"].encode())
    assert ioctl(k, gfd, "VFIO_GROUP_GET_DEVICE_FD", name) == -errno.EINVAL  # no container
    assert ioctl(k, gfd, "VFIO_GROUP_UNSET_CONTAINER", None) == -errno.EINVAL
    assert ioctl(k, gfd, "VFIO_GROUP_SET_CONTAINER", ctypes.c_int(999)) == -errno.EBADF
    assert ioctl(k, gfd, "VFIO_GROUP_SET_CONTAINER", ctypes.c_int(gfd)) == -errno.EBADFD
    assert ioctl(k, gfd, "VFIO_GROUP_SET_CONTAINER", ctypes.c_int(cfd)) == 0
    assert status(k, gfd) == K["VFIO_GROUP_FLAGS_VIABLE"] | K["VFIO_GROUP_FLAGS_CONTAINER_SET"]
    assert ioctl(k, gfd, "VFIO_GROUP_SET_CONTAINER", ctypes.c_int(cfd)) == -errno.EINVAL
    assert ioctl(k, cfd, "VFIO_IOMMU_MAP_DMA", m) == -errno.EINVAL
    assert ioctl(k, gfd, "VFIO_GROUP_GET_DEVICE_FD", name) == -errno.EINVAL  # no backend yet
    assert (
        ioctl(k, gfd, "VFIO_GROUP_GET_STATUS", make("vfio_group_status", argsz=7)) == -errno.EINVAL
    )
    assert ioctl(k, gfd, "VFIO_IOMMU_MAP_DMA", m) == -errno.ENOTTY


def test_set_iommu_types(core: Any, pci: dict[str, Any]) -> None:
    k, info = core, pci
    t = Type1(k, info["group"], iommu_type=None)
    assert t.ioctl("VFIO_SET_IOMMU", K["VFIO_SPAPR_TCE_IOMMU"]) == -errno.ENODEV
    assert t.ioctl("VFIO_SET_IOMMU", 42) == -errno.ENODEV
    assert t.ioctl("VFIO_SET_IOMMU", K["VFIO_UNMAP_ALL"]) == -errno.EINVAL  # type1 refuses
    assert t.ioctl("VFIO_SET_IOMMU", K["VFIO_TYPE1_IOMMU"]) == 0
    assert t.ioctl("VFIO_SET_IOMMU", K["VFIO_TYPE1v2_IOMMU"]) == -errno.EINVAL  # once only
    # Neither QEMU's VT-d (no snoop control) nor virtio-iommu enforces cache coherency.
    assert t.ioctl("VFIO_CHECK_EXTENSION", K["VFIO_DMA_CC_IOMMU"]) == 0


def test_get_device_fd_and_unset_container(core: Any, pci: dict[str, Any], mem: Buf) -> None:
    k, info = core, pci
    t = Type1(k, info["group"])
    name = ctypes.create_string_buffer(b"0000:00:1f.7")
    assert ioctl(k, t.gfd, "VFIO_GROUP_GET_DEVICE_FD", name) == -errno.ENODEV
    assert t.map(mem.addr, 0x100000, PAGE) == 0
    fd = t.device(info["bdf"])
    fd2 = t.device(info["bdf"])  # the group path may open a device more than once
    assert fd >= 0 and fd2 >= 0
    assert ioctl(k, t.gfd, "VFIO_GROUP_UNSET_CONTAINER", None) == -errno.EBUSY
    assert k.close(fd) == 0 and k.close(fd2) == 0
    assert ioctl(k, t.gfd, "VFIO_GROUP_UNSET_CONTAINER", None) == 0
    assert status(k, t.gfd) == K["VFIO_GROUP_FLAGS_VIABLE"]
    # The last group leaving released the backend with its mappings.
    assert t.map(mem.addr, 0x100000, PAGE) == -errno.EINVAL
    assert t.set_container(t.gfd) == 0
    assert t.ioctl("VFIO_SET_IOMMU", K["VFIO_TYPE1v2_IOMMU"]) == 0
    assert t.map(mem.addr, 0x100000, PAGE) == 0  # nothing left over at that IOVA


def test_device_fd_keeps_group_open(core: Any, pci: dict[str, Any], mem: Buf) -> None:
    k, info = core, pci
    t = Type1(k, info["group"])
    assert t.map(mem.addr, 0x100000, PAGE) == 0
    dev = Dev(k, t.device(info["bdf"]))
    dev.enable()
    assert close(k, t.gfd) == 0
    assert k.open(info["group_path"], os.O_RDWR) == -errno.EBUSY  # still held by the device
    # A round trip through edu's buffer (QEMU keeps that buffer across opens): the
    # container still maps the page both ways.
    pattern = bytes(range(256)) * (PAGE // 256)
    mem.write(pattern)
    dev.dma(0x100000, EDU_DMA_BUF, PAGE, to_ram=False)
    mem.write(b"\x42" * PAGE)
    dev.dma(EDU_DMA_BUF, 0x100000, PAGE, to_ram=True)
    assert mem.read(PAGE) == pattern
    assert dev.close() == 0
    gfd = track(k, k.open(info["group_path"], os.O_RDWR))
    assert gfd >= 0 and status(k, gfd) == K["VFIO_GROUP_FLAGS_VIABLE"]


# -- GET_INFO -----------------------------------------------------------------------------
def test_get_info_caps() -> None:
    k, info = one_device(dma_entry_limit=100)
    t = Type1(k, info["group"])
    rc, inf, caps, _ = get_info(t)
    assert rc == 0
    assert inf.flags == K["VFIO_IOMMU_INFO_PGSIZES"] | K["VFIO_IOMMU_INFO_CAPS"]
    assert inf.iova_pgsizes == 4096 | 2 * MIB | GIB
    assert inf.cap_offset == 24 and inf.argsz == 4096
    assert sorted(caps) == [1, 2, 3]
    _h, _v, _n, flags, _pad, pgsizes, max_bitmap = struct.unpack_from("<HHIIIQQ", caps[2])
    assert (flags, pgsizes, max_bitmap) == (0, PAGE, 256 * MIB)
    assert struct.unpack_from("<I", caps[3], 8)[0] == 100
    assert iova_ranges(caps[1]) == VTD_RANGES
    # Chain order as the kernel builds it: migration, DMA_AVAIL, IOVA_RANGE.
    first = struct.unpack_from("<HHI", bytes(get_info(t)[3]), 24)
    assert first[0] == 2 and first[2] == 24 + 32


def test_get_info_argsz_too_small_for_caps(core: Any, pci: dict[str, Any]) -> None:
    k, info = core, pci
    t = Type1(k, info["group"])
    s = make("vfio_iommu_type1_info")
    assert t.ioctl("VFIO_IOMMU_GET_INFO", s) == 0
    assert s.flags & K["VFIO_IOMMU_INFO_CAPS"]
    assert s.argsz == 24 + 32 + 16 + 16 + 2 * 16  # what the chain needs
    assert s.cap_offset == 0
    pgsizes = PAGE_MASK if behind_virtio_iommu(k) else 4096 | 2 * MIB | GIB
    assert s.iova_pgsizes == pgsizes
    small = make("vfio_iommu_type1_info", argsz=15)
    assert t.ioctl("VFIO_IOMMU_GET_INFO", small) == -errno.EINVAL
    # A 16-byte argsz gets argsz, flags and pgsizes back.
    raw = (ctypes.c_uint8 * 24)(*([0xEE] * 24))
    struct.pack_into("<I", raw, 0, 16)
    assert t.ioctl("VFIO_IOMMU_GET_INFO", raw) == 0
    assert struct.unpack_from("<IIQ", bytes(raw)) == (120, 3, pgsizes)
    assert bytes(raw)[16:] == b"\xee" * 8


def test_mixed_iommus_share_the_common_geometry() -> None:
    k = sim_kernel()
    a = k.machine.add_pci_device(iommu="vtd")
    b = k.machine.add_pci_device(iommu="mock")
    t = Type1(k, a["group"])
    gfd = track(k, k.open(b["group_path"], os.O_RDWR))
    assert t.set_container(gfd) == 0
    rc, inf, caps, _ = get_info(t)
    assert rc == 0
    # The usable IOVA is the intersection of both apertures minus both reserved lists.
    assert iova_ranges(caps[1]) == [(1 << 24, (1 << 31) - 1)]
    # 4K|2M|1G AND 2K|1M is empty, as type1 computes it (and then nothing can be mapped).
    assert inf.iova_pgsizes == 0


def test_mock_iommu_hides_sub_page_sizes() -> None:
    k = sim_kernel()
    info = k.machine.add_pci_device(iommu="mock")
    t = Type1(k, info["group"])
    rc, inf, caps, _ = get_info(t)
    assert rc == 0
    assert inf.iova_pgsizes == PAGE | (PAGE // 2 * 512)
    assert iova_ranges(caps[1]) == [(1 << 24, (1 << 31) - 1)]
    buf = Buf(PAGE)
    try:
        assert t.map(buf.addr, 0x100000, PAGE) == -errno.EINVAL  # below the aperture
        assert t.map(buf.addr, 1 << 24, PAGE) == 0
    finally:
        buf.free()


# -- MAP_DMA ------------------------------------------------------------------------------
def test_map_dma_checks_in_order(mem: Buf) -> None:
    k, info = one_device(dma_entry_limit=4)
    t = Type1(k, info["group"])
    va = mem.addr
    short = make("vfio_iommu_type1_dma_map", argsz=31, flags=3, vaddr=va, iova=0, size=PAGE)
    assert t.ioctl("VFIO_IOMMU_MAP_DMA", short) == -errno.EINVAL
    assert t.map(va, 0, PAGE, flags=8) == -errno.EINVAL  # unknown flag
    assert t.map(va, 0, PAGE, flags=0) == -errno.EINVAL  # neither READ nor WRITE
    assert t.map(va, 0, 0) == -errno.EINVAL  # size 0
    assert t.map(va, 0x800, PAGE) == -errno.EINVAL  # misaligned iova
    assert t.map(va + 8, 0, PAGE) == -errno.EINVAL  # misaligned vaddr
    assert t.map(va, (1 << 64) - PAGE, 2 * PAGE) == -errno.EINVAL  # wraps
    assert t.map(va, 0x100000, 4 * PAGE) == 0
    assert t.map(va, 0x100000 + 3 * PAGE, PAGE) == -errno.EEXIST
    assert t.map(va, 0x100000 - PAGE, 2 * PAGE) == -errno.EEXIST
    assert t.map(va, 0xFEE00000, PAGE) == -errno.EINVAL  # the MSI window
    assert t.map(va, 1 << 48, PAGE) == -errno.EINVAL  # past the aperture
    gone = Buf(PAGE)
    gone.free()
    assert t.map(gone.addr, 0x200000, PAGE) == -errno.EFAULT  # pin fails
    for i in range(3):
        assert t.map(va, 0x300000 + i * PAGE, PAGE) == 0
    assert t.map(va, 0x400000, PAGE) == -errno.ENOSPC  # dma_entry_limit
    assert t.map(va, 0x100000, PAGE) == -errno.EEXIST  # EEXIST comes first
    assert t.unmap(0x300000, PAGE) == (0, PAGE)
    assert t.map(va, 0x400000, PAGE) == 0


def test_map_dma_read_only_memory_needs_read_only_mapping(core: Any, pci: dict[str, Any]) -> None:
    k, info = core, pci
    t = Type1(k, info["group"])
    ro = Buf(PAGE)
    try:
        ctypes.CDLL(None).mprotect(ctypes.c_void_p(ro.addr), ctypes.c_size_t(PAGE), 1)
        assert t.map(ro.addr, 0x100000, PAGE, flags=R | W) == -errno.EFAULT
        assert t.map(ro.addr, 0x100000, PAGE, flags=R) == 0
    finally:
        ro.free()


def test_memlock_accounting(mem: Buf) -> None:
    k, info = one_device(cap_ipc_lock=False, rlimit_memlock=16 * PAGE)
    t = Type1(k, info["group"])
    assert t.map(mem.addr, 0x100000, 12 * PAGE) == 0
    assert t.map(mem.addr, 0x200000, 8 * PAGE) == -errno.ENOMEM
    assert t.map(mem.addr, 0x200000, 4 * PAGE) == 0
    assert t.unmap(0x100000, 12 * PAGE) == (0, 12 * PAGE)
    assert t.map(mem.addr, 0x200000 + 4 * PAGE, 8 * PAGE) == 0
    privileged_k, privileged = one_device(cap_ipc_lock=True, rlimit_memlock=16 * PAGE)
    pt = Type1(privileged_k, privileged["group"])
    assert pt.map(mem.addr, 0x100000, 64 * PAGE) == 0


def test_dma_entry_limit_small() -> None:
    k, info = one_device(dma_entry_limit=64)
    t = Type1(k, info["group"])
    buf = Buf(PAGE)
    try:
        for i in range(64):
            assert t.map(buf.addr, i * PAGE, PAGE) == 0
        assert t.map(buf.addr, 64 * PAGE, PAGE) == -errno.ENOSPC
        assert struct.unpack_from("<I", get_info(t)[2][3], 8)[0] == 0
        # Adjacent mappings are not merged: UNMAP_ALL frees every entry.
        assert t.unmap(0, 0, flags=K["VFIO_DMA_UNMAP_FLAG_ALL"]) == (0, 64 * PAGE)
        assert struct.unpack_from("<I", get_info(t)[2][3], 8)[0] == 64
    finally:
        buf.free()


@only_on_sim  # reads the simulator's configuration
def test_dma_entry_limit_default(core: Any, pci: dict[str, Any]) -> None:
    # 65535 real MAP_DMAs take ~30 s here (each pins, i.e. reads /proc/self/maps), so the
    # default is checked through what the container reports; the limit itself is
    # exercised with a small SimConfig.dma_entry_limit above.
    k, info = core, pci
    assert k.config.dma_entry_limit == 65535
    t = Type1(k, info["group"])
    assert struct.unpack_from("<I", get_info(t)[2][3], 8)[0] == 65535
    buf = Buf(PAGE)
    try:
        assert t.map(buf.addr, 0x100000, PAGE) == 0
        assert struct.unpack_from("<I", get_info(t)[2][3], 8)[0] == 65534
    finally:
        buf.free()


# -- UNMAP_DMA ----------------------------------------------------------------------------
def test_unmap_v2(core: Any, pci: dict[str, Any], mem: Buf) -> None:
    k, info = core, pci
    t = Type1(k, info["group"])
    assert t.map(mem.addr, 0x100000, 4 * PAGE) == 0
    assert t.map(mem.addr, 0x200000, 4 * PAGE) == 0
    assert t.unmap(0x100000 + PAGE, 3 * PAGE) == (-errno.EINVAL, 3 * PAGE)  # bisects start
    assert t.unmap(0x100000, 2 * PAGE) == (-errno.EINVAL, 2 * PAGE)  # bisects end
    assert t.unmap(0x100800, PAGE) == (-errno.EINVAL, PAGE)  # misaligned
    assert t.unmap(0x100000, 0) == (-errno.EINVAL, 0)
    assert t.unmap(0x100000, PAGE + 1) == (-errno.EINVAL, PAGE + 1)
    assert t.unmap(0x300000, 4 * PAGE) == (0, 0)  # nothing there
    assert t.unmap(0, 1 << 30) == (0, 8 * PAGE)  # both
    all_ = K["VFIO_DMA_UNMAP_FLAG_ALL"]
    assert t.unmap(0, PAGE, flags=all_) == (-errno.EINVAL, PAGE)
    assert t.unmap(0, 0, flags=all_) == (0, 0)
    assert t.unmap(0, PAGE, flags=1 << 3) == (-errno.EINVAL, PAGE)  # unknown flag


def test_unmap_v1(core: Any, pci: dict[str, Any], mem: Buf) -> None:
    k, info = core, pci
    t = Type1(k, info["group"], iommu_type="VFIO_TYPE1_IOMMU")
    assert t.map(mem.addr, 0x100000, 16 * PAGE) == 0
    assert t.map(mem.addr, 0x200000, 4 * PAGE) == 0
    # Starting inside a mapping: success, nothing unmapped.
    assert t.unmap(0x100000 + PAGE, 64 * PAGE) == (0, 0)
    # Covering a mapping's first IOVA takes the whole mapping.
    assert t.unmap(0x100000, PAGE) == (0, 16 * PAGE)
    assert t.unmap(0x1F0000, 0x20000) == (0, 4 * PAGE)
    dirty = make("vfio_iommu_type1_dirty_bitmap", flags=START)
    assert t.ioctl("VFIO_IOMMU_DIRTY_PAGES", dirty) == -errno.EACCES  # v2 only


# -- dirty pages --------------------------------------------------------------------------
def dirty_get(
    t: Type1, iova: int, size: int, bitmap: Any, pgsize: int = PAGE, nbytes: int | None = None
) -> int:
    raw = (ctypes.c_uint8 * (8 + 40))()
    hdr = S["vfio_iommu_type1_dirty_bitmap"].from_buffer(raw)
    hdr.argsz, hdr.flags = 48, GET_BITMAP
    rng = S["vfio_iommu_type1_dirty_bitmap_get"].from_buffer(raw, 8)
    rng.iova, rng.size = iova, size
    rng.bitmap.pgsize = pgsize
    rng.bitmap.size = ctypes.sizeof(bitmap) if nbytes is None else nbytes
    rng.bitmap.data = ctypes.addressof(bitmap)
    return t.ioctl("VFIO_IOMMU_DIRTY_PAGES", raw)


def test_dirty_pages_all_mapped_pages_dirty(core: Any, pci: dict[str, Any], mem: Buf) -> None:
    k, info = core, pci
    t = Type1(k, info["group"])
    base = 0x1000000
    assert t.map(mem.addr, base, 3 * PAGE) == 0
    assert t.map(mem.addr, base + 8 * PAGE, 2 * PAGE) == 0
    bm = (ctypes.c_uint64 * 2)()
    assert dirty_get(t, base, 64 * PAGE, bm) == -errno.EINVAL  # not started
    for flags in (0, START | STOP, 8):
        s = make("vfio_iommu_type1_dirty_bitmap", flags=flags)
        assert t.ioctl("VFIO_IOMMU_DIRTY_PAGES", s) == -errno.EINVAL
    assert (
        t.ioctl("VFIO_IOMMU_DIRTY_PAGES", make("vfio_iommu_type1_dirty_bitmap", flags=START)) == 0
    )
    assert dirty_get(t, base, 64 * PAGE, bm, pgsize=2 * PAGE) == -errno.EINVAL
    assert dirty_get(t, base, 64 * PAGE, bm, nbytes=4) == -errno.EINVAL  # bitmap too small
    assert dirty_get(t, base + PAGE, 63 * PAGE, bm) == -errno.EINVAL  # bisects a mapping
    assert dirty_get(t, base, 64 * PAGE, bm) == 0
    assert bm[0] == 0b11_0000_0111 and bm[1] == 0
    # Every query reports every mapped page again (no hardware tracking behind Type1). An
    # entry that does not start on a word is shifted in its own bitmap, which keeps what the
    # shift moved past its end (the clear after a query covers only its own bits): the
    # second entry's stale bits 2, 8 and 9 come back at 10, 16 and 17 (as 6.12.95 does).
    bm[0] = 0
    assert dirty_get(t, base, 64 * PAGE, bm) == 0
    assert bm[0] == 0b11_0000_0111_0000_0111
    # A range starting mid-word: the word keeps the user's bits (OR), later words are
    # overwritten up to the end of the entry's last word.
    bm2 = (ctypes.c_uint64 * 2)(0x8000_0000_0000_0000, 0xFFFF)
    assert dirty_get(t, base - 62 * PAGE, 128 * PAGE, bm2) == 0
    # Word 1 gets the second entry's own bitmap, shifted by 6 with its stale bits, OR'ed
    # with the whole word the first entry had just written there.
    assert bm2[0] == 0xC000_0000_0000_0000 and bm2[1] == 0xC1_C1C1
    assert t.ioctl("VFIO_IOMMU_DIRTY_PAGES", make("vfio_iommu_type1_dirty_bitmap", flags=STOP)) == 0
    assert dirty_get(t, base, 64 * PAGE, bm) == -errno.EINVAL


def test_unmap_with_dirty_bitmap(core: Any, pci: dict[str, Any], mem: Buf) -> None:
    k, info = core, pci
    t = Type1(k, info["group"])
    assert t.map(mem.addr, 0x100000, 5 * PAGE) == 0
    bm = (ctypes.c_uint64 * 1)()
    raw = (ctypes.c_uint8 * 48)()
    u = S["vfio_iommu_type1_dma_unmap"].from_buffer(raw)
    u.argsz, u.flags = 48, K["VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP"]
    u.iova, u.size = 0x100000, 5 * PAGE
    b = S["vfio_bitmap"].from_buffer(raw, 24)
    b.pgsize, b.size, b.data = PAGE, 8, ctypes.addressof(bm)
    assert t.ioctl("VFIO_IOMMU_UNMAP_DMA", raw) == -errno.EINVAL  # tracking not started
    assert (
        t.ioctl("VFIO_IOMMU_DIRTY_PAGES", make("vfio_iommu_type1_dirty_bitmap", flags=START)) == 0
    )
    u.flags |= K["VFIO_DMA_UNMAP_FLAG_ALL"]
    assert t.ioctl("VFIO_IOMMU_UNMAP_DMA", raw) == -errno.EINVAL
    u.flags = K["VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP"]
    u.argsz = 40
    assert t.ioctl("VFIO_IOMMU_UNMAP_DMA", raw) == -errno.EINVAL  # no room for the bitmap
    u.argsz = 48
    assert t.ioctl("VFIO_IOMMU_UNMAP_DMA", raw) == 0
    assert u.size == 5 * PAGE and bm[0] == 0b11111


def test_attach_group_conflicting_with_mappings(mem: Buf) -> None:
    k = sim_kernel()
    a = k.machine.add_pci_device(iommu="vtd")
    b = k.machine.add_pci_device(iommu="mock")
    t = Type1(k, a["group"])
    assert t.map(mem.addr, 0x100000, PAGE) == 0  # below the mock aperture
    gfd = track(k, k.open(b["group_path"], os.O_RDWR))
    assert t.set_container(gfd) == -errno.EINVAL
    assert status(k, gfd) == K["VFIO_GROUP_FLAGS_VIABLE"]
    assert t.unmap(0x100000, PAGE) == (0, PAGE)
    assert t.set_container(gfd) == 0
    assert status(k, gfd) == K["VFIO_GROUP_FLAGS_VIABLE"] | K["VFIO_GROUP_FLAGS_CONTAINER_SET"]
    assert iova_ranges(get_info(t)[2][1]) == [(1 << 24, (1 << 31) - 1)]


def test_pinned_shared_page_outlives_munmap(core: Any, pci: dict[str, Any]) -> None:
    # Type1 holds what MAP_DMA pinned (sim/core/page_hold.h): after munmap and a new mmap
    # at the VA, the device still writes the memfd page it pinned, not the new mapping.
    rw = 3  # PROT_READ | PROT_WRITE
    k, info = core, pci
    t = Type1(k, info["group"])
    dev = Dev(k, t.device(info["bdf"]))
    dev.enable()
    memfd = os.memfd_create("type1-pin")
    os.ftruncate(memfd, PAGE)
    va = libc.mmap(None, PAGE, rw, 0x01, memfd, 0)  # MAP_SHARED
    src = Buf(PAGE)
    payload = os.urandom(PAGE)
    ctypes.memmove(src.addr, payload, PAGE)
    try:
        assert t.map(va, 0x100000, PAGE, R | W) == 0
        assert t.map(src.addr, 0x200000, PAGE, R | W) == 0
        dev.dma(0x200000, EDU_DMA_BUF, PAGE, to_ram=False)
        assert libc.munmap(va, PAGE) == 0
        assert libc.mmap(va, PAGE, rw, 0x10 | 0x02 | 0x20, -1, 0) == va  # FIXED|PRIVATE|ANON
        dev.dma(EDU_DMA_BUF, 0x100000, PAGE, to_ram=True)
        assert ctypes.string_at(va, PAGE) == bytes(PAGE)
        assert os.pread(memfd, PAGE, 0) == payload
    finally:
        t.unmap(0, 0, flags=K["VFIO_DMA_UNMAP_FLAG_ALL"])
        libc.munmap(va, PAGE)
        os.close(memfd)
        src.free()
