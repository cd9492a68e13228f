"""Raw VFIO access to the simulated kernel for the VFIO tests (private to tests/sim).

ctypes structs come from ``fastmap._core.uapi_structs()``; every helper returns the
kernel's ``>=0 or -errno`` unchanged so tests can assert exact errnos. ``Buf`` is anonymous
process memory a simulated device can DMA into.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from typing import Any

from fastmap import _core, uapi

# The uAPI classes fastmap.uapi built (and offset-checked) from the C++ definitions.
S: dict[str, Any] = {name: getattr(uapi, name) for name, *_ in _core.uapi_structs()}
K: dict[str, int] = dict(_core.uapi_constants())
PAGE = mmap.PAGESIZE
REGION_SHIFT = 40
CFG_OFF = K["VFIO_PCI_CONFIG_REGION_INDEX"] << REGION_SHIFT
BAR0_OFF = K["VFIO_PCI_BAR0_REGION_INDEX"] << REGION_SHIFT

# edu registers and commands (QEMU docs/specs/edu.rst)
EDU_ID, EDU_ALIVE, EDU_FACT, EDU_STATUS, EDU_IRQ_STATUS = 0x00, 0x04, 0x08, 0x20, 0x24
EDU_IRQ_RAISE, EDU_IRQ_ACK = 0x60, 0x64
EDU_DMA_SRC, EDU_DMA_DST, EDU_DMA_CNT, EDU_DMA_CMD = 0x80, 0x88, 0x90, 0x98
EDU_DMA_BUF = 0x40000
EDU_CMD_RUN, EDU_CMD_TO_RAM, EDU_CMD_IRQ = 1, 2, 4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


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


class Buf:
    """Anonymous memory at a fixed address, optionally aligned; `free()` unmaps it."""

    def __init__(self, length: int, align: int = 0) -> None:
        total = length + align
        p = _libc.mmap(None, total, mmap.PROT_READ | mmap.PROT_WRITE,
                       mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
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


def kernel(**config: Any) -> Any:
    cfg = _core.SimConfig()
    for k, v in config.items():
        setattr(cfg, k, v)
    return _core.SimKernel(cfg)


def ioctl(k: Any, fd: int, req: str, arg: Any) -> int:
    return int(k.ioctl(fd, K[req], arg))


class Dev:
    """A VFIO device fd: config space, region info and BAR0 through pread/pwrite."""

    def __init__(self, k: Any, fd: int) -> None:
        self.k, self.fd = k, fd

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
        """Run one edu DMA; returns the command register read back afterwards."""
        self.w64(EDU_DMA_SRC, src)
        self.w64(EDU_DMA_DST, dst)
        self.w64(EDU_DMA_CNT, cnt)
        self.w64(EDU_DMA_CMD, EDU_CMD_RUN | (EDU_CMD_TO_RAM if to_ram else 0)
                 | (EDU_CMD_IRQ if irq else 0))
        return self.r64(EDU_DMA_CMD)

    def close(self) -> int:
        return int(self.k.close(self.fd))


class Type1:
    """A container with one group attached: container fd, group fd."""

    def __init__(self, k: Any, group: int, iommu_type: str | None = "VFIO_TYPE1v2_IOMMU") -> None:
        self.k = k
        self.cfd = k.open("/dev/vfio/vfio", os.O_RDWR)
        assert self.cfd >= 0
        self.gfd = k.open(f"/dev/vfio/{group}", os.O_RDWR)
        assert self.gfd >= 0, self.gfd
        assert self.set_container(self.gfd) == 0
        if iommu_type is not None:
            assert self.ioctl("VFIO_SET_IOMMU", K[iommu_type]) == 0

    def ioctl(self, req: str, arg: Any) -> int:
        return ioctl(self.k, self.cfd, req, arg)

    def set_container(self, gfd: int) -> int:
        return ioctl(self.k, gfd, "VFIO_GROUP_SET_CONTAINER", ctypes.c_int(self.cfd))

    def device(self, bdf: str) -> int:
        return ioctl(self.k, self.gfd, "VFIO_GROUP_GET_DEVICE_FD",
                     ctypes.create_string_buffer(bdf.encode()))

    def map(self, vaddr: int, iova: int, size: int, flags: int = 3) -> int:
        return self.ioctl("VFIO_IOMMU_MAP_DMA", make("vfio_iommu_type1_dma_map", flags=flags,
                                                     vaddr=vaddr, iova=iova, size=size))

    def unmap(self, iova: int, size: int, flags: int = 0) -> tuple[int, int]:
        s = make("vfio_iommu_type1_dma_unmap", iova=iova, size=size, flags=flags)
        rc = self.ioctl("VFIO_IOMMU_UNMAP_DMA", s)
        return rc, int(s.size)


class Iommufd:
    """An iommufd with one IOAS, and helpers to bind/attach a cdev and map."""

    def __init__(self, k: Any) -> None:
        self.k = k
        self.fd = k.open("/dev/iommu", os.O_RDWR)
        assert self.fd >= 0
        s = make("iommu_ioas_alloc")
        assert self.ioctl("IOMMU_IOAS_ALLOC", s) == 0
        self.ioas = int(s.out_ioas_id)

    def ioctl(self, req: str, arg: Any) -> int:
        return ioctl(self.k, self.fd, req, arg)

    def map(self, va: int, length: int, iova: int) -> int:
        s = make("iommu_ioas_map", ioas_id=self.ioas, user_va=va, length=length, iova=iova,
                 flags=K["IOMMU_IOAS_MAP_FIXED_IOVA"] | K["IOMMU_IOAS_MAP_READABLE"]
                 | K["IOMMU_IOAS_MAP_WRITEABLE"])
        return self.ioctl("IOMMU_IOAS_MAP", s)

    def unmap(self, iova: int, length: int) -> int:
        return self.ioctl("IOMMU_IOAS_UNMAP",
                          make("iommu_ioas_unmap", ioas_id=self.ioas, iova=iova, length=length))

    def iova_ranges(self) -> tuple[int, list[tuple[int, int]], int]:
        arr = (S["iommu_iova_range"] * 16)()
        s = make("iommu_ioas_iova_ranges", ioas_id=self.ioas, num_iovas=16,
                 allowed_iovas=ctypes.addressof(arr))
        rc = self.ioctl("IOMMU_IOAS_IOVA_RANGES", s)
        got = [(int(arr[i].start), int(arr[i].last)) for i in range(min(16, s.num_iovas))]
        return rc, got, int(s.out_iova_alignment)


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
