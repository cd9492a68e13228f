"""Raw uAPI access to the simulated kernel for the iommufd tests (private to tests/sim).

ctypes classes are built from ``fastmap._core.uapi_structs()``, so the layouts are the
C++ ones; ``Iommufd`` wraps one open /dev/iommu with thin helpers that return the kernel's
``>=0 or -errno`` unchanged, so tests can assert exact errnos.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import Any

from fastmap import _core, uapi

# The uAPI classes fastmap.uapi built (and offset-checked) from the C++ definitions.
S: dict[str, Any] = {name: getattr(uapi, name) for name, *_ in _core.uapi_structs()}
K: dict[str, int] = dict(_core.uapi_constants())
PAGE = mmap.PAGESIZE
MOCK_PAGE = PAGE // 2
U64_MAX = (1 << 64) - 1

R = K["IOMMU_IOAS_MAP_READABLE"]
W = K["IOMMU_IOAS_MAP_WRITEABLE"]
FIXED = K["IOMMU_IOAS_MAP_FIXED_IOVA"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def make(name: str, **fields: Any) -> Any:
    """A uAPI struct with `size` preset to its sizeof and the given fields set."""
    s = S[name]()
    if "size" in dict(S[name]._fields_):
        s.size = ctypes.sizeof(s)
    for k, v in fields.items():
        setattr(s, k, v)
    return s


def anon(length: int, prot: int = mmap.PROT_READ | mmap.PROT_WRITE, align: int = 0) -> int:
    """Anonymous memory (never freed unless `unmap` is called): its address."""
    extra = align if align else 0
    p = _libc.mmap(None, length + extra, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert p not in (None, ctypes.c_void_p(-1).value)
    if align:
        aligned = (p + align - 1) & ~(align - 1)
        return int(aligned)
    return int(p)


def unmap(addr: int, length: int) -> None:
    assert _libc.munmap(addr, length) == 0


def protect(addr: int, length: int, prot: int) -> None:
    assert _libc.mprotect(addr, length, prot) == 0


def madvise(addr: int, length: int, advice: int) -> None:
    assert _libc.madvise(addr, length, advice) == 0


def buf_addr(b: Any) -> int:
    return ctypes.addressof(b)


class Iommufd:
    """One /dev/iommu of a (possibly shared) SimKernel."""

    def __init__(self, kernel: Any = None, **config: Any) -> None:
        if kernel is None and os.environ.get("FASTMAP_RAW_REAL"):
            # Ad-hoc differential runs inside tools/vmtest: the same calls on the real kernel
            # (config knobs cannot apply there).
            kernel = _core.RealKernel()
        if kernel is None:
            cfg = _core.SimConfig()
            for k, v in config.items():
                setattr(cfg, k, v)
            kernel = _core.SimKernel(cfg)
        self.k = kernel
        self.fd = kernel.open("/dev/iommu", os.O_RDWR)
        assert self.fd >= 0

    def ioctl(self, req: int | str, arg: Any) -> int:
        if isinstance(req, str):
            req = K[req]
        return int(self.k.ioctl(self.fd, req, arg))

    def close(self) -> None:
        assert self.k.close(self.fd) == 0

    # -- object helpers ------------------------------------------------------------------
    def ioas(self) -> int:
        s = make("iommu_ioas_alloc")
        assert self.ioctl("IOMMU_IOAS_ALLOC", s) == 0
        return int(s.out_ioas_id)

    def destroy(self, obj_id: int) -> int:
        return self.ioctl("IOMMU_DESTROY", make("iommu_destroy", id=obj_id))

    def map(self, ioas: int, va: int, length: int, iova: int | None = None,
            flags: int = R | W) -> tuple[int, int]:
        s = make("iommu_ioas_map", ioas_id=ioas, user_va=va, length=length,
                 flags=flags | (FIXED if iova is not None else 0), iova=iova or 0)
        rc = self.ioctl("IOMMU_IOAS_MAP", s)
        return rc, int(s.iova)

    def map_file(self, ioas: int, fd: int, start: int, length: int, iova: int | None = None,
                 flags: int = R | W) -> tuple[int, int]:
        s = make("iommu_ioas_map_file", ioas_id=ioas, fd=fd, start=start, length=length,
                 flags=flags | (FIXED if iova is not None else 0), iova=iova or 0)
        rc = self.ioctl("IOMMU_IOAS_MAP_FILE", s)
        return rc, int(s.iova)

    def copy(self, dst: int, src: int, src_iova: int, length: int,
             dst_iova: int | None = None, flags: int = R | W) -> tuple[int, int]:
        s = make("iommu_ioas_copy", dst_ioas_id=dst, src_ioas_id=src, src_iova=src_iova,
                 length=length, dst_iova=dst_iova or 0,
                 flags=flags | (FIXED if dst_iova is not None else 0))
        rc = self.ioctl("IOMMU_IOAS_COPY", s)
        return rc, int(s.dst_iova)

    def unmap(self, ioas: int, iova: int, length: int) -> tuple[int, int]:
        s = make("iommu_ioas_unmap", ioas_id=ioas, iova=iova, length=length)
        rc = self.ioctl("IOMMU_IOAS_UNMAP", s)
        return rc, int(s.length)

    def iova_ranges(self, ioas: int, num: int = 16) -> tuple[int, list[tuple[int, int]], int]:
        arr = (S["iommu_iova_range"] * max(num, 1))()
        s = make("iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=num,
                 allowed_iovas=ctypes.addressof(arr))
        rc = self.ioctl("IOMMU_IOAS_IOVA_RANGES", s)
        got = [(int(arr[i].start), int(arr[i].last)) for i in range(min(num, s.num_iovas))]
        return rc, got, int(s.out_iova_alignment) if rc in (0, -90) else 0

    def allow(self, ioas: int, ranges: list[tuple[int, int]]) -> int:
        arr = (S["iommu_iova_range"] * max(len(ranges), 1))()
        for i, (a, b) in enumerate(ranges):
            arr[i].start, arr[i].last = a, b
        s = make("iommu_ioas_allow_iovas", ioas_id=ioas, num_iovas=len(ranges),
                 allowed_iovas=ctypes.addressof(arr))
        return self.ioctl("IOMMU_IOAS_ALLOW_IOVAS", s)

    def option(self, option_id: int, op: int, object_id: int = 0,
               val64: int = 0) -> tuple[int, int]:
        s = make("iommu_option", option_id=option_id, op=op, object_id=object_id, val64=val64)
        rc = self.ioctl("IOMMU_OPTION", s)
        return rc, int(s.val64)

    def test_cmd(self, op: str, obj_id: int = 0, **payload: Any) -> tuple[int, Any]:
        s = make("iommu_test_cmd", op=K["IOMMU_TEST_OP_" + op], id=obj_id)
        member = {
            "ADD_RESERVED": "add_reserved", "MOCK_DOMAIN": "mock_domain",
            "MOCK_DOMAIN_FLAGS": "mock_domain_flags",
            "MOCK_DOMAIN_REPLACE": "mock_domain_replace", "MD_CHECK_MAP": "check_map",
            "DIRTY": "dirty", "MD_CHECK_REFS": "check_refs",
            "CREATE_ACCESS": "create_access", "ACCESS_PAGES": "access_pages",
            "DESTROY_ACCESS_PAGES": "destroy_access_pages", "ACCESS_RW": "access_rw",
            "SET_TEMP_MEMORY_LIMIT": "memory_limit", "ACCESS_REPLACE_IOAS": "access_replace_ioas",
        }.get(op)
        if member:
            sub = getattr(s.u, member)
            for k, v in payload.items():
                setattr(sub, k, v)
        rc = self.ioctl("IOMMU_TEST_CMD", s)
        return rc, s

    def mock_domain(self, pt_id: int, dev_flags: int | None = None) -> tuple[int, int, int, int]:
        """MOCK_DOMAIN(_FLAGS): (rc, stdev_id, hwpt_id, idev_id)."""
        if dev_flags is None:
            rc, s = self.test_cmd("MOCK_DOMAIN", pt_id)
        else:
            rc, s = self.test_cmd("MOCK_DOMAIN_FLAGS", pt_id, dev_flags=dev_flags)
        md = s.u.mock_domain  # the kernel answers through this layout for both ops
        return rc, int(md.out_stdev_id), int(md.out_hwpt_id), int(md.out_idev_id)

    def hwpt_alloc(self, dev_id: int, pt_id: int, flags: int = 0) -> tuple[int, int]:
        s = make("iommu_hwpt_alloc", dev_id=dev_id, pt_id=pt_id, flags=flags)
        rc = self.ioctl("IOMMU_HWPT_ALLOC", s)
        return rc, int(s.out_hwpt_id)

    def set_dirty(self, hwpt: int, enable: bool) -> int:
        s = make("iommu_hwpt_set_dirty_tracking", hwpt_id=hwpt,
                 flags=K["IOMMU_HWPT_DIRTY_TRACKING_ENABLE"] if enable else 0)
        return self.ioctl("IOMMU_HWPT_SET_DIRTY_TRACKING", s)

    def get_dirty(self, hwpt: int, iova: int, length: int, page_size: int, data: int,
                  flags: int = 0) -> int:
        s = make("iommu_hwpt_get_dirty_bitmap", hwpt_id=hwpt, iova=iova, length=length,
                 page_size=page_size, data=data, flags=flags)
        return self.ioctl("IOMMU_HWPT_GET_DIRTY_BITMAP", s)
