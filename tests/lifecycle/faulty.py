"""A Kernel wrapper for lifecycle tests: records every call and fails chosen ones.

`FaultyKernel(inner)` is a `fastmap.kernel.Kernel` over the same C++ kernel as `inner`
(real or simulated), so everything built on it (backend, devices, IOAS) goes through it:

* `log` lists the calls in order ("open /dev/iommu = 3", "VFIO_DEVICE_BIND_IOMMUFD fd 4",
  "close 3"); `open_fds` is the set of fds opened (open, VFIO_GROUP_GET_DEVICE_FD) and not
  yet closed;
* `fail(call, errno, nth=1)` makes the nth matching call fail with that errno before it
  reaches the kernel; `call` is an ioctl name, "open(<path>)", or "open(<path prefix>"
  (no closing parenthesis) for every path starting so;
* `override(call, fn)` lets the call run, then replaces its result or edits its struct
  (fn(arg, ret) -> new ret), to fake what a kernel could answer (a non-viable group, an
  unknown API version).

The C++ batch engine (`_core.IoasMapper`) calls the C++ kernel directly, so IOAS map and
unmap calls of the memory listener are not seen here; tests fail those with memory the
kernel refuses to pin instead.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastmap import uapi
from fastmap.errors import KernelError
from fastmap.kernel import IoctlArg, Kernel


@dataclass
class _Fault:
    call: str
    errno: int
    nth: int
    seen: int = 0


class FaultyKernel(Kernel):
    def __init__(self, inner: Kernel) -> None:
        super().__init__(inner.core, inner.version)
        self.inner = inner
        self.log: list[str] = []
        self.open_fds: set[int] = set()
        self._faults: list[_Fault] = []
        self._overrides: dict[str, Callable[[Any, int], int]] = {}
        self.ids: set[int] = set()  # object ids the kernel handed out

    @property
    def machine(self) -> Any:
        return getattr(self.inner, "machine", None)

    # --- configuration --------------------------------------------------------------------
    def fail(self, call: str, err: int, nth: int = 1) -> None:
        self._faults.append(_Fault(call, err, nth))

    def override(self, call: str, fn: Callable[[Any, int], int]) -> None:
        self._overrides[call] = fn

    def clear(self) -> None:
        self._faults.clear()
        self._overrides.clear()

    @property
    def pending_faults(self) -> list[str]:
        return [f.call for f in self._faults if f.seen < f.nth]

    def _inject(self, name: str, detail: str = "") -> None:
        for f in self._faults:
            prefix = f.call.startswith("open(") and not f.call.endswith(")")
            if name == f.call or (prefix and name.startswith(f.call)):
                f.seen += 1
                if f.seen == f.nth:
                    self.log.append(f"{name}{detail} INJECTED {_errno.errorcode[f.errno]}")
                    raise KernelError.from_errno(f.errno, name)

    # --- the seam -----------------------------------------------------------------------------
    def open(self, path: str, flags: int = os.O_RDWR) -> int:
        self._inject(f"open({path})")
        fd = self.inner.open(path, flags)
        self.open_fds.add(fd)
        self.log.append(f"open {path} = {fd}")
        return fd

    def close(self, fd: int) -> None:
        self.log.append(f"close {fd}")
        self.open_fds.discard(fd)
        self.inner.close(fd)

    def ioctl(self, fd: int, request: int, arg: IoctlArg = None) -> int:
        name = uapi.request_name(request)
        if name == "VFIO_DEVICE_FEATURE|VFIO_IOMMU_DIRTY_PAGES":
            name = "VFIO_IOMMU_DIRTY_PAGES"
        self._inject(name, f" fd {fd}")
        self.log.append(f"{name} fd {fd}" + _describe(arg))
        ret = self.inner.ioctl(fd, request, arg)
        if name == "VFIO_GROUP_GET_DEVICE_FD":
            self.open_fds.add(ret)
            self.log[-1] += f" -> {ret}"
        for field in ("out_ioas_id", "out_hwpt_id", "out_devid"):
            value = getattr(arg, field, None)
            if isinstance(value, int) and value:
                self.ids.add(value)
                self.log[-1] += f" -> {field}={value}"
        override = self._overrides.get(name)
        if override is not None:
            ret = override(arg, ret)
        return ret


def _describe(arg: object) -> str:
    for field in ("id", "pt_id", "hwpt_id", "ioas_id"):
        value = getattr(arg, field, None)
        if isinstance(value, int):
            return f" {field}={value}"
    return ""


def destroy_sweep(kernel: Kernel, iommufd: int, upto: int = 32) -> dict[int, int]:
    """IOMMU_DESTROY every id in 1..upto; {id: errno} of those that did not say ENOENT
    (0 = it existed and is destroyed now). Empty means the object table was empty."""
    left: dict[int, int] = {}
    for obj in range(1, upto + 1):
        try:
            kernel.ioctl(iommufd, uapi.IOMMU_DESTROY, uapi.new(uapi.iommu_destroy, id=obj))
        except KernelError as e:
            if e.errno != _errno.ENOENT:
                left[obj] = e.errno
        else:
            left[obj] = 0
    return left
