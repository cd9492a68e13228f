"""The transport layer: one Python face over the C++ ioctl seam, for both kernels.

`Kernel` wraps a `_core.Kernel` (the real system calls, or the embedded simulated kernel)
and turns its -errno results into typed `KernelError`s. Code written against it (raw uAPI
structs from fastmap.uapi passed to `ioctl`) runs unchanged on either kernel:

    with open_kernel() as k, k.open_fd("/dev/iommu") as fd:   # fastmap.seam.open_kernel
        alloc = uapi.new(uapi.iommu_ioas_alloc)
        fd.ioctl(uapi.IOMMU_IOAS_ALLOC, alloc)

Pointers inside structs (user_va, allowed_iovas, data...) are addresses in this process;
the simulated kernel runs in-process, so they mean the same thing to both kernels. The
caller keeps the memory they point to alive for the duration of the call.
"""

from __future__ import annotations

import ctypes
import mmap as mmap_module
import os
import platform
import re
from typing import Any, Literal, TypeAlias

from fastmap import _checks, _core, uapi
from fastmap._closing import Closing
from fastmap._layout import field_values
from fastmap.errors import KernelError

KernelKind = Literal["real", "sim"]
# Linux moves at most MAX_RW_COUNT (INT_MAX rounded down to a page) bytes per read/write.
_MAX_RW_COUNT = 0x7FFFF000
#: What ioctl() accepts: a uAPI struct/union/array (passed by address and updated in place),
#: a writable buffer, an integer passed by value, or None (a NULL argument).
IoctlArg: TypeAlias = (
    "ctypes.Structure | ctypes.Union | ctypes.Array[Any] | bytearray | memoryview | int | None"
)


class Kernel:
    """A kernel reached through the seam: `open`, `close`, `ioctl`, `pread`, `pwrite`.

    Every method raises KernelError (a typed OSError) where the system call would fail.
    """

    def __init__(self, core: _core.Kernel, version: int) -> None:
        self._core = core
        self._version = version

    @property
    def core(self) -> _core.Kernel:
        """The underlying C++ kernel object."""
        return self._core

    @property
    def name(self) -> str:
        """'real' or 'sim'."""
        return self._core.name

    @property
    def version(self) -> int:
        """The Linux version this kernel is (or models), as major*100+minor: 612 = 6.12."""
        return self._version

    def open(self, path: str, flags: int = os.O_RDWR) -> int:
        """open(2) a device node; returns the fd number (in this kernel's fd namespace).
        A path with a NUL byte is a ValueError (C would open the path before the NUL)."""
        path = _checks.path("path", path)
        flags = _checks.integer("flags", flags, "s32")
        return _check(self._core.open(path, flags), f"open({path})", {"flags": flags})

    def close(self, fd: int) -> None:
        """close(2)."""
        fd = _checks.fd_number("fd", fd)
        _check(self._core.close(fd), "close", {"fd": fd})

    def ioctl(self, fd: int, request: int, arg: IoctlArg = None) -> int:
        """ioctl(2): `arg` is a uAPI struct (updated in place), a writable buffer, an int
        passed by value, or None. Returns the ioctl's non-negative result.

        A buffer (ctypes objects included) must be C-contiguous, writable, and at least as
        long as its leading size/argsz field says, or the call is refused with ValueError
        before it reaches the kernel (which would read and write that many bytes)."""
        fd = _checks.fd_number("fd", fd)
        request = _checks.integer("request", request, "u32")
        if isinstance(arg, int):
            arg = _checks.integer("ioctl arg", arg, "u64")
        # ctypes objects go through the buffer protocol too (_core asks for a plain
        # C-contiguous writable export, no format), so _core checks their length.
        ret = self._core.ioctl(fd, request, arg)
        if ret < 0:
            raise KernelError.from_errno(-ret, _call_name(request, arg), _arguments(arg))
        return ret

    def pread(self, fd: int, count: int, offset: int) -> bytes:
        """pread(2): up to `count` bytes at `offset` (VFIO region access)."""
        fd = _checks.fd_number("fd", fd)
        offset = _checks.integer("offset", offset, "u64")
        count = _checks.integer("count", count, "u64")
        if count > _MAX_RW_COUNT:
            raise ValueError(f"count={count:#x} is above Linux's per-call limit {_MAX_RW_COUNT:#x}")
        data = self._core.pread(fd, count, offset)
        if isinstance(data, int):
            _check(data, "pread", {"fd": fd, "count": count, "offset": offset})
            return b""
        return data

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        """pwrite(2) of all of `data` (a C-contiguous buffer); returns the bytes written."""
        fd = _checks.fd_number("fd", fd)
        offset = _checks.integer("offset", offset, "u64")
        return _check(
            self._core.pwrite(fd, data, offset),
            "pwrite",
            {"fd": fd, "count": memoryview(data).nbytes, "offset": offset},
        )

    def mmap(
        self, fd: int, length: int, offset: int, prot: int, flags: int = mmap_module.MAP_SHARED
    ) -> int:
        """mmap(2) of `length` bytes of `fd` at `offset` (a VFIO region; MAP_SHARED unless
        `flags` says otherwise): the address. Unmap it with `munmap`."""
        from fastmap._libc import MAP_FAILED, libc

        fd = _checks.fd_number("fd", fd)
        addr = libc.mmap(None, length, prot, flags, fd, offset)
        if addr in (None, MAP_FAILED):
            err = ctypes.get_errno()
            _check(-err, "mmap", {"fd": fd, "length": length, "offset": offset})
        return int(addr)

    def munmap(self, addr: int, length: int) -> None:
        """munmap(2) of a mapping `mmap` made."""
        from fastmap._libc import libc

        if libc.munmap(addr, length) != 0:
            _check(-ctypes.get_errno(), "munmap", {"addr": addr, "length": length})

    def open_fd(self, path: str, flags: int = os.O_RDWR) -> Fd:
        """open(2) wrapped in an Fd that closes itself."""
        return Fd(self, self.open(path, flags))

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        """Nothing to release: fds are owned by Fd objects, the kernel by its references."""

    def __repr__(self) -> str:
        return f"<fastmap Kernel {self.name} {self.version // 100}.{self.version % 100}>"


class Fd(Closing):
    """One open fd of a Kernel, closed on `close()` or at the end of a `with` block.

    Objects living in the fd (an Ioas, a HWPT) hold the Fd, not its number: once it is
    closed, `number` raises, so a stale object can never act on a later fd that reused the
    number. `owned=False` wraps an fd someone else closes: `close()` only forgets it.
    """

    def __init__(self, kernel: Kernel, fd: int, *, owned: bool = True) -> None:
        self.kernel = kernel
        self.fd: int | None = _checks.fd_number("fd", fd)
        self.owned = owned

    @property
    def closed(self) -> bool:
        return self.fd is None

    @property
    def number(self) -> int:
        """The fd number; raises ValueError once closed."""
        if self.fd is None:
            raise ValueError("I/O operation on a closed fastmap Fd")
        return self.fd

    def __int__(self) -> int:
        return self.number

    def ioctl(self, request: int, arg: IoctlArg = None) -> int:
        """Kernel.ioctl on this fd."""
        return self.kernel.ioctl(self.number, request, arg)

    def pread(self, count: int, offset: int) -> bytes:
        """Kernel.pread on this fd."""
        return self.kernel.pread(self.number, count, offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        """Kernel.pwrite on this fd."""
        return self.kernel.pwrite(self.number, data, offset)

    def close(self) -> None:
        """Close the fd (idempotent)."""
        fd, self.fd = self.fd, None
        if fd is not None and self.owned:
            self.kernel.close(fd)

    def __repr__(self) -> str:
        return f"<fastmap Fd {self.fd} on {self.kernel.name}>"


def _check(ret: int, call: str, arguments: dict[str, object]) -> int:
    if ret < 0:
        raise KernelError.from_errno(-ret, call, arguments)
    return ret


def _call_name(request: int, arg: object) -> str:
    name = uapi.request_name(request)
    # The selftest multiplexes many operations over one ioctl: name the operation too.
    if name == "IOMMU_TEST_CMD" and isinstance(arg, ctypes.Structure):
        op = _TEST_OPS.get(getattr(arg, "op", -1))
        if op is not None:
            return f"{name}({op})"
    return name


_TEST_OPS = {
    value: name.removeprefix("IOMMU_TEST_OP_")
    for name, value in uapi.CONSTANTS.items()
    if name.startswith("IOMMU_TEST_OP_")
}


def _arguments(arg: object) -> dict[str, object]:
    if isinstance(arg, uapi.STRUCTS["iommu_test_cmd"]):
        # Show only the payload member that belongs to the operation, flattened.
        op = _TEST_OPS.get(arg.op, "").lower().removeprefix("md_")
        fields = {k: v for k, v in field_values(arg).items() if k not in ("u", "last")}
        member = getattr(arg.u, op, None)
        if isinstance(member, ctypes.Structure):
            fields.update(field_values(member))
        return fields
    if isinstance(arg, ctypes.Structure | ctypes.Union):
        return field_values(arg)
    if isinstance(arg, int):
        return {"arg": arg}
    return {}


def real_kernel_version() -> int:
    """This machine's Linux version as major*100+minor (uname -r)."""
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    if m is None:
        raise ValueError(f"cannot parse kernel release {platform.release()!r}")
    return int(m.group(1)) * 100 + int(m.group(2))


class RealKernel(Kernel):
    """The running Linux kernel, through real system calls."""

    def __init__(self) -> None:
        super().__init__(_core.RealKernel(), real_kernel_version())
