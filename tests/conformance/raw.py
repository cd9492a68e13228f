"""The errno face of the conformance suite's raw helpers: every call returns the kernel's
``>= 0 or -errno`` unchanged, so a test can assert exact errnos and check orders.

It drives a ``fastmap._core.Kernel`` (the real system calls or the embedded simulator), so
the same test runs on both kernels: take the ``core`` fixture (tests/conformance/conftest.py)
for a kernel parametrized over "sim" and "real", or ``sim_kernel(**config)`` for a
simulator with non-default configuration (such tests run on the simulator only). helpers.py
is the exception-raising face of the same calls, on fastmap.kernel.Fd.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import time
from typing import Any

from fastmap import _core, uapi

from .helpers import MOCK_PAGE_SIZE, PAGE_SIZE, U64_MAX

# The uAPI classes fastmap.uapi built (and offset-checked) from the C++ definitions.
S: dict[str, Any] = {name: getattr(uapi, name) for name, *_ in _core.uapi_structs()}
K: dict[str, int] = dict(_core.uapi_constants())
PAGE = PAGE_SIZE
MOCK_PAGE = MOCK_PAGE_SIZE
__all__ = ["MOCK_PAGE", "PAGE", "U64_MAX", "K", "S"]

R = K["IOMMU_IOAS_MAP_READABLE"]
W = K["IOMMU_IOAS_MAP_WRITEABLE"]
FIXED = K["IOMMU_IOAS_MAP_FIXED_IOVA"]

REGION_SHIFT = 40  # vfio-pci's region offset: index << 40
CFG_OFF = K["VFIO_PCI_CONFIG_REGION_INDEX"] << REGION_SHIFT
BAR0_OFF = K["VFIO_PCI_BAR0_REGION_INDEX"] << REGION_SHIFT

# edu registers and commands (QEMU docs/specs/edu.rst)
EDU_ID, EDU_ALIVE, EDU_FACT, EDU_STATUS, EDU_IRQ_STATUS = 0x00, 0x04, 0x08, 0x20, 0x24
EDU_IRQ_RAISE, EDU_IRQ_ACK = 0x60, 0x64
EDU_DMA_SRC, EDU_DMA_DST, EDU_DMA_CNT, EDU_DMA_CMD = 0x80, 0x88, 0x90, 0x98
EDU_DMA_BUF = 0x40000
EDU_CMD_RUN, EDU_CMD_TO_RAM, EDU_CMD_IRQ = 1, 2, 4
EDU_STATUS_COMPUTING = 0x01
_DMA_POLLS = 20_000  # ~20 s or more: far beyond edu's 100 ms timer, even under TCG

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
]  # fmt: skip
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

# fds the helpers opened and nobody closed yet: the `core` fixture closes them after each
# test, so a real kernel does not keep pins and objects of finished tests.
_open_fds: list[tuple[Any, int]] = []


def track(k: Any, fd: int) -> int:
    """Remember `fd` of kernel `k` for close_leftovers()."""
    if fd >= 0:
        _open_fds.append((k, fd))
    return fd


def close(k: Any, fd: int) -> int:
    """close(2) an fd opened through track(); returns 0 or -errno."""
    if (k, fd) in _open_fds:
        _open_fds.remove((k, fd))
    return int(k.close(fd))


def close_leftovers(k: Any) -> None:
    """Close, newest first, the fds tests left open on kernel `k`."""
    for entry in reversed([e for e in _open_fds if e[0] is k]):
        _open_fds.remove(entry)
        k.close(entry[1])


def make(name: str, **fields: Any) -> Any:
    """A uAPI struct with `argsz` (or `size`) preset to its sizeof and the fields set."""
    s = S[name]()
    names = dict(s._fields_)
    for sz in ("argsz", "size"):
        if sz in names:
            setattr(s, sz, ctypes.sizeof(s))
    for k, v in fields.items():
        setattr(s, k, v)
    return s


def sim_kernel(**config: Any) -> Any:
    """A fresh simulated kernel (a `_core.SimKernel`) with these SimConfig fields."""
    cfg = _core.SimConfig()
    for k, v in config.items():
        setattr(cfg, k, v)
    return _core.SimKernel(cfg)


# -- process memory -------------------------------------------------------------------------


def anon(length: int, prot: int = mmap.PROT_READ | mmap.PROT_WRITE, align: int = 0) -> int:
    """Private anonymous memory (never freed unless `unmap` is called): its address."""
    p = _libc.mmap(None, length + align, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert p not in (None, ctypes.c_void_p(-1).value)
    if align:
        return int((p + align - 1) & ~(align - 1))
    return int(p)


def unmap(addr: int, length: int) -> None:
    assert _libc.munmap(addr, length) == 0


def protect(addr: int, length: int, prot: int) -> None:
    assert _libc.mprotect(addr, length, prot) == 0


def madvise(addr: int, length: int, advice: int) -> None:
    assert _libc.madvise(addr, length, advice) == 0


def buf_addr(b: Any) -> int:
    return ctypes.addressof(b)


class Buf:
    """Private anonymous memory at a fixed address, optionally aligned; `free()` unmaps it."""

    def __init__(self, length: int, align: int = 0) -> None:
        total = length + align
        p = _libc.mmap(None, total, mmap.PROT_READ | mmap.PROT_WRITE,
                       mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)  # fmt: skip
        assert p not in (None, ctypes.c_void_p(-1).value)
        self._base, self._total = int(p), total
        self.addr = (self._base + align - 1) & ~(align - 1) if align else self._base
        self.length = length

    def write(self, data: bytes, off: int = 0) -> None:
        ctypes.memmove(self.addr + off, data, len(data))

    def read(self, n: int | None = None, off: int = 0) -> bytes:
        return ctypes.string_at(self.addr + off, self.length - off if n is None else n)

    def free(self) -> None:
        assert _libc.munmap(self._base, self._total) == 0


# -- /dev/iommu -----------------------------------------------------------------------------


def ioctl(k: Any, fd: int, req: int | str, arg: Any) -> int:
    return int(k.ioctl(fd, K[req] if isinstance(req, str) else req, arg))


class Iommufd:
    """One open /dev/iommu of kernel `k` (a `_core.Kernel`; a new default simulator when
    None, or one configured by `config`)."""

    def __init__(self, k: Any = None, **config: Any) -> None:
        assert k is None or not config, "configuration applies to a new simulator only"
        self.k = sim_kernel(**config) if k is None else k
        self.fd = track(self.k, self.k.open("/dev/iommu", os.O_RDWR))
        assert self.fd >= 0

    def ioctl(self, req: int | str, arg: Any) -> int:
        return ioctl(self.k, self.fd, req, arg)

    def close(self) -> None:
        assert close(self.k, self.fd) == 0

    # -- object helpers ------------------------------------------------------------------
    def ioas(self) -> int:
        s = make("iommu_ioas_alloc")
        assert self.ioctl("IOMMU_IOAS_ALLOC", s) == 0
        return int(s.out_ioas_id)

    def destroy(self, obj_id: int) -> int:
        return self.ioctl("IOMMU_DESTROY", make("iommu_destroy", id=obj_id))

    def map(self, ioas: int, va: int, length: int, iova: int | None = None,
            flags: int = R | W) -> tuple[int, int]:  # fmt: skip
        s = make("iommu_ioas_map", ioas_id=ioas, user_va=va, length=length,
                 flags=flags | (FIXED if iova is not None else 0), iova=iova or 0)  # fmt: skip
        rc = self.ioctl("IOMMU_IOAS_MAP", s)
        return rc, int(s.iova)

    def map_file(self, ioas: int, fd: int, start: int, length: int, iova: int | None = None,
                 flags: int = R | W) -> tuple[int, int]:  # fmt: skip
        s = make("iommu_ioas_map_file", ioas_id=ioas, fd=fd, start=start, length=length,
                 flags=flags | (FIXED if iova is not None else 0), iova=iova or 0)  # fmt: skip
        rc = self.ioctl("IOMMU_IOAS_MAP_FILE", s)
        return rc, int(s.iova)

    def copy(self, dst: int, src: int, src_iova: int, length: int,
             dst_iova: int | None = None, flags: int = R | W) -> tuple[int, int]:  # fmt: skip
        s = make("iommu_ioas_copy", dst_ioas_id=dst, src_ioas_id=src, src_iova=src_iova,
                 length=length, dst_iova=dst_iova or 0,
                 flags=flags | (FIXED if dst_iova is not None else 0))  # fmt: skip
        rc = self.ioctl("IOMMU_IOAS_COPY", s)
        return rc, int(s.dst_iova)

    def unmap(self, ioas: int, iova: int, length: int) -> tuple[int, int]:
        s = make("iommu_ioas_unmap", ioas_id=ioas, iova=iova, length=length)
        rc = self.ioctl("IOMMU_IOAS_UNMAP", s)
        return rc, int(s.length)

    def iova_ranges(self, ioas: int, num: int = 16) -> tuple[int, list[tuple[int, int]], int]:
        arr = (S["iommu_iova_range"] * max(num, 1))()
        s = make("iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=num,
                 allowed_iovas=ctypes.addressof(arr))  # fmt: skip
        rc = self.ioctl("IOMMU_IOAS_IOVA_RANGES", s)
        got = [(int(arr[i].start), int(arr[i].last)) for i in range(min(num, s.num_iovas))]
        return rc, got, int(s.out_iova_alignment) if rc in (0, -90) else 0

    def allow(self, ioas: int, ranges: list[tuple[int, int]]) -> int:
        arr = (S["iommu_iova_range"] * max(len(ranges), 1))()
        for i, (a, b) in enumerate(ranges):
            arr[i].start, arr[i].last = a, b
        s = make("iommu_ioas_allow_iovas", ioas_id=ioas, num_iovas=len(ranges),
                 allowed_iovas=ctypes.addressof(arr))  # fmt: skip
        return self.ioctl("IOMMU_IOAS_ALLOW_IOVAS", s)

    def option(self, option_id: int, op: int, object_id: int = 0,
               val64: int = 0) -> tuple[int, int]:  # fmt: skip
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
        }.get(op)  # fmt: skip
        if member:
            sub = getattr(s.u, member)
            for k, v in payload.items():
                setattr(sub, k, v)
        rc = self.ioctl("IOMMU_TEST_CMD", s)
        if op == "CREATE_ACCESS" and rc == 0:
            track(self.k, int(s.u.create_access.out_access_fd))
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
                 flags=K["IOMMU_HWPT_DIRTY_TRACKING_ENABLE"] if enable else 0)  # fmt: skip
        return self.ioctl("IOMMU_HWPT_SET_DIRTY_TRACKING", s)

    def get_dirty(self, hwpt: int, iova: int, length: int, page_size: int, data: int,
                  flags: int = 0) -> int:  # fmt: skip
        s = make("iommu_hwpt_get_dirty_bitmap", hwpt_id=hwpt, iova=iova, length=length,
                 page_size=page_size, data=data, flags=flags)  # fmt: skip
        return self.ioctl("IOMMU_HWPT_GET_DIRTY_BITMAP", s)


# -- VFIO devices, groups and Type1 containers ---------------------------------------------


class Dev:
    """A VFIO device fd: config space, region info and BAR0 through pread/pwrite."""

    def __init__(self, k: Any, fd: int) -> None:
        self.k, self.fd = k, track(k, fd)

    @classmethod
    def open(cls, k: Any, path: str) -> Dev:
        fd = k.open(path, os.O_RDWR)
        assert fd >= 0, (path, fd)
        return cls(k, fd)

    def ioctl(self, req: str, arg: Any) -> int:
        return ioctl(self.k, self.fd, req, arg)

    def info(self) -> tuple[int, Any]:
        s = make("vfio_device_info")
        return self.ioctl("VFIO_DEVICE_GET_INFO", s), s

    def region(self, index: int) -> tuple[int, Any]:
        s = make("vfio_region_info", index=index)
        return self.ioctl("VFIO_DEVICE_GET_REGION_INFO", s), s

    def cfg_read(self, off: int, n: int) -> int:
        data = self.k.pread(self.fd, n, CFG_OFF + off)
        assert isinstance(data, bytes), data
        return int.from_bytes(data, "little")

    def cfg_write(self, off: int, value: int, n: int) -> int:
        return int(self.k.pwrite(self.fd, value.to_bytes(n, "little"), CFG_OFF + off))

    def enable(self, memory: bool = True, master: bool = True) -> None:
        cmd = self.cfg_read(4, 2) | (2 if memory else 0) | (4 if master else 0)
        assert self.cfg_write(4, cmd, 2) == 2

    def r32(self, off: int) -> int:
        data = self.k.pread(self.fd, 4, BAR0_OFF + off)
        assert isinstance(data, bytes), data
        return int(struct.unpack("<I", data)[0])

    def w32(self, off: int, v: int) -> None:
        assert self.k.pwrite(self.fd, struct.pack("<I", v & 0xFFFFFFFF), BAR0_OFF + off) == 4

    def r64(self, off: int) -> int:
        data = self.k.pread(self.fd, 8, BAR0_OFF + off)
        assert isinstance(data, bytes), data
        return int(struct.unpack("<Q", data)[0])

    def w64(self, off: int, v: int) -> None:
        assert self.k.pwrite(self.fd, struct.pack("<Q", v), BAR0_OFF + off) == 8

    def dma(self, src: int, dst: int, cnt: int, to_ram: bool, irq: bool = False) -> int:
        """Run one edu DMA to its end; returns the command register read back afterwards.

        The simulator finishes inside the write of the command; QEMU's edu from a timer,
        so the register is polled until RUN clears (a wedged device fails the test)."""
        self.w64(EDU_DMA_SRC, src)
        self.w64(EDU_DMA_DST, dst)
        self.w64(EDU_DMA_CNT, cnt)
        self.w64(EDU_DMA_CMD, EDU_CMD_RUN | (EDU_CMD_TO_RAM if to_ram else 0)
                 | (EDU_CMD_IRQ if irq else 0))  # fmt: skip
        for _ in range(_DMA_POLLS):
            cmd = self.r64(EDU_DMA_CMD)
            if not cmd & EDU_CMD_RUN:
                return cmd
            time.sleep(0.001)
        raise AssertionError(f"edu DMA still running after {_DMA_POLLS} polls")

    def factorial(self) -> int:
        """The factorial register once edu's computation is done: QEMU computes in a thread
        (the status register's COMPUTING bit), the simulator inside the write."""
        for _ in range(_DMA_POLLS):
            if not self.r32(EDU_STATUS) & EDU_STATUS_COMPUTING:
                return self.r32(EDU_FACT)
            time.sleep(0.001)
        raise AssertionError(f"edu still computing after {_DMA_POLLS} polls")

    def close(self) -> int:
        return close(self.k, self.fd)


class Type1:
    """A container with one group attached: container fd, group fd. `group` is the group's
    number or its /dev/vfio/N path."""

    def __init__(self, k: Any, group: int | str,
                 iommu_type: str | None = "VFIO_TYPE1v2_IOMMU") -> None:  # fmt: skip
        self.k = k
        self.cfd = track(k, k.open("/dev/vfio/vfio", os.O_RDWR))
        assert self.cfd >= 0
        path = group if isinstance(group, str) else f"/dev/vfio/{group}"
        self.gfd = track(k, k.open(path, os.O_RDWR))
        assert self.gfd >= 0, self.gfd
        assert self.set_container(self.gfd) == 0
        if iommu_type is not None:
            assert self.ioctl("VFIO_SET_IOMMU", K[iommu_type]) == 0

    def ioctl(self, req: str, arg: Any) -> int:
        return ioctl(self.k, self.cfd, req, arg)

    def set_container(self, gfd: int) -> int:
        return ioctl(self.k, gfd, "VFIO_GROUP_SET_CONTAINER", ctypes.c_int(self.cfd))

    def device(self, bdf: str) -> int:
        # The fd is the caller's: Dev(k, fd) tracks it.
        return ioctl(self.k, self.gfd, "VFIO_GROUP_GET_DEVICE_FD",
                     ctypes.create_string_buffer(bdf.encode()))  # fmt: skip

    def map(self, vaddr: int, iova: int, size: int, flags: int = 3) -> int:
        return self.ioctl(
            "VFIO_IOMMU_MAP_DMA",
            make("vfio_iommu_type1_dma_map", flags=flags, vaddr=vaddr, iova=iova, size=size),
        )

    def unmap(self, iova: int, size: int, flags: int = 0) -> tuple[int, int]:
        s = make("vfio_iommu_type1_dma_unmap", iova=iova, size=size, flags=flags)
        rc = self.ioctl("VFIO_IOMMU_UNMAP_DMA", s)
        return rc, int(s.size)


class IoasFd(Iommufd):
    """An iommufd with one IOAS (`ioas`), for binding and attaching a device cdev."""

    def __init__(self, k: Any) -> None:
        super().__init__(k)
        self.ioas_id = self.ioas()

    def map_fixed(self, va: int, length: int, iova: int) -> int:
        return self.map(self.ioas_id, va, length, iova)[0]

    def unmap_range(self, iova: int, length: int) -> int:
        return self.unmap(self.ioas_id, iova, length)[0]


def bind(dev: Dev, iommufd: int, argsz: int | None = None, flags: int = 0) -> tuple[int, int]:
    s = make("vfio_device_bind_iommufd", iommufd=iommufd, flags=flags)
    if argsz is not None:
        s.argsz = argsz
    rc = dev.ioctl("VFIO_DEVICE_BIND_IOMMUFD", s)
    return rc, int(s.out_devid)


def attach(dev: Dev, pt_id: int, argsz: int | None = None, flags: int = 0) -> tuple[int, int]:
    s = make("vfio_device_attach_iommufd_pt", pt_id=pt_id, flags=flags)
    if argsz is not None:
        s.argsz = argsz
    rc = dev.ioctl("VFIO_DEVICE_ATTACH_IOMMUFD_PT", s)
    return rc, int(s.pt_id)


def detach(dev: Dev, argsz: int | None = None, flags: int = 0) -> int:
    s = make("vfio_device_detach_iommufd_pt", flags=flags)
    if argsz is not None:
        s.argsz = argsz
    return dev.ioctl("VFIO_DEVICE_DETACH_IOMMUFD_PT", s)
