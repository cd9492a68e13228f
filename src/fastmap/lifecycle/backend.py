"""The IOMMUFD backend: one /dev/iommu shared by every device and address space using it.

This mirrors QEMU's `iommufd` backend object (backends/iommufd.c, QEMU 10.0):

    with IOMMUFDBackend() as be:               # real kernel if /dev/iommu exists, else sim
        with be.ioas() as ioas:                 # an IOAS, destroyed at the end
            iova = ioas.map(buf)

* The fd is opened by the first `connect()` and closed after the last `disconnect()`
  (reference counted: each attached device holds one reference, a `with` block another).
  A pre-opened fd (`IOMMUFDBackend(fd=...)`) is never closed by the backend.
* `kernel=` picks the kernel: a `fastmap.kernel.Kernel`, "real" or "sim"; by default
  $FASTMAP_KERNEL, else the real kernel where /dev/iommu exists and the simulated one
  otherwise (`fastmap.seam.open_kernel`).
* The thin calls (`map_dma`, `unmap_dma`, `alloc_hwpt`, dirty tracking, `get_device_info`)
  are QEMU's, one ioctl each; bulk mapping goes through the `Ioas` that `alloc_ioas()`
  returns, which drives the C++ batch engine.
* Failures that QEMU only reports (`free_id`) are logged on the "fastmap.backend" logger;
  every other failure raises a `KernelError` naming the call, errno and likely cause.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt

from fastmap import _checks, uapi
from fastmap.errors import KernelError
from fastmap.ioas import Ioas
from fastmap.kernel import Fd, Kernel, KernelKind
from fastmap.lifecycle.host_iommu_device import capability_names, hw_info_type_name
from fastmap.prot import Prot
from fastmap.seam import open_kernel

log = logging.getLogger("fastmap.backend")

IOMMU_PATH = "/dev/iommu"
# GET_HW_INFO buffer: larger than every driver's record (VT-d 24 bytes, SMMUv3 32).
_HW_INFO_BUFFER = 256


class IommufdUnavailableError(KernelError):
    """/dev/iommu could not be opened; the message says why and how to fix it."""


def _open_hint(err: int, path: str) -> str:
    if err == _errno.ENOENT:
        return (
            f"{path} does not exist: this kernel lacks CONFIG_IOMMUFD, or the iommufd "
            "module is not loaded. Fix: `modprobe iommufd` as root (Linux 6.2+; VFIO cdevs "
            "need 6.6+ with CONFIG_VFIO_DEVICE_CDEV), or run on the simulated kernel: "
            "IOMMUFDBackend(kernel='sim') or FASTMAP_KERNEL=sim"
        )
    if err in (_errno.EACCES, _errno.EPERM):
        return (
            f"no permission to open {path} (root-only by default). Fix: run as root, or "
            'grant access with a udev rule such as KERNEL=="iommu", GROUP="kvm", '
            'MODE="0660" and join that group; pinning memory also needs RLIMIT_MEMLOCK '
            "or CAP_IPC_LOCK"
        )
    if err in (_errno.ENODEV, _errno.ENXIO):
        return (
            f"{path} exists but no iommufd driver answers (module unloaded?). Fix: "
            "`modprobe iommufd`"
        )
    if err in (_errno.EMFILE, _errno.ENFILE):
        return "out of file descriptors. Fix: close fds or raise the limit (ulimit -n)"
    return f"opening {path} failed; check that iommufd is available on this kernel"


@dataclass(frozen=True)
class DeviceHwInfo:
    """What IOMMU_GET_HW_INFO reports about the IOMMU behind a bound device."""

    #: IOMMU_HW_INFO_TYPE_* (0 NONE: the driver reports no data, e.g. virtio-iommu).
    type: int
    #: IOMMU_HW_CAP_* bits.
    capabilities: int
    #: The driver's record (struct iommu_hw_info_vtd for VT-d), as many bytes as it has.
    data: bytes

    @property
    def dirty_tracking(self) -> bool:
        """IOMMU_HW_CAP_DIRTY_TRACKING: HWPTs may be allocated with DIRTY_TRACKING."""
        return bool(self.capabilities & uapi.IOMMU_HW_CAP_DIRTY_TRACKING)

    @property
    def type_name(self) -> str:
        """'intel-vtd', 'arm-smmuv3', 'selftest', 'none' or 'type N'."""
        return hw_info_type_name(self.type)

    def __repr__(self) -> str:
        return (
            f"DeviceHwInfo({self.type_name}, capabilities={self.capabilities:#x} "
            f"[{capability_names(self.capabilities)}], data={len(self.data)} bytes)"
        )


class IOMMUFDBackend:
    """A reference-counted /dev/iommu (QEMU's IOMMUFDBackend)."""

    def __init__(
        self,
        fd: int | None = None,
        *,
        kernel: Kernel | KernelKind | None = None,
        path: str = IOMMU_PATH,
        unmap_enoent_ok: bool = True,
    ) -> None:
        """`fd`: a pre-opened iommufd (in `kernel`'s fd namespace) the backend uses but never
        closes. `unmap_enoent_ok`: unmap_dma treats ENOENT (nothing mapped there) as success,
        as QEMU does (a vIOMMU issues redundant unmaps; Type1 answers them with success)."""
        self.kernel: Kernel = kernel if isinstance(kernel, Kernel) else open_kernel(kernel)
        self.path = path
        self.owned = fd is None
        # An Fd object, not a number: objects allocated here hold it, and once it is closed
        # they cannot reach whatever later reuses the number.
        self._fd: Fd | None = None if fd is None else Fd(self.kernel, fd, owned=False)
        self.users = 0
        self.unmap_enoent_ok = unmap_enoent_ok
        # IOAS id -> the Ioas whose engine owns its mappings (map_dma/unmap_dma use it).
        self._ioases: dict[int, Ioas] = {}

    # --- connection ----------------------------------------------------------------------
    @property
    def fd(self) -> int:
        """The iommufd's number; RuntimeError while an owned backend is not connected."""
        return self.fd_object.number

    @property
    def fd_object(self) -> Fd:
        """The iommufd as an Fd (closed when the backend's last user disconnects)."""
        if self._fd is None:
            raise RuntimeError("the IOMMUFD backend is not connected: call connect() first")
        return self._fd

    @property
    def connected(self) -> bool:
        return self._fd is not None

    def connect(self) -> None:
        """Take a reference; the first one opens /dev/iommu (owned backends only).

        Raises IommufdUnavailableError, whose message says why the open failed and what
        to do about it.
        """
        if self.owned and self.users == 0:
            try:
                self._fd = self.kernel.open_fd(self.path, os.O_RDWR)
            except KernelError as e:
                raise IommufdUnavailableError(
                    e.errno,
                    f"open({self.path})",
                    {"kernel": self.kernel.name},
                    _open_hint(e.errno, self.path),
                ) from e
        self.users += 1

    def disconnect(self) -> None:
        """Drop a reference; after the last one an owned fd is closed. Extra calls do
        nothing (as in QEMU)."""
        if self.users == 0:
            return
        self.users -= 1
        if self.users == 0 and self.owned and self._fd is not None:
            fd, self._fd = self._fd, None
            self._ioases.clear()  # their IOASes die with the fd
            try:
                fd.close()
            except KernelError as e:
                log.error("closing the iommufd %s failed: %s", fd, e)

    @property
    def can_be_deleted(self) -> bool:
        """No device or user holds the backend."""
        return self.users == 0

    def __enter__(self) -> IOMMUFDBackend:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        state = f"fd {self._fd.fd}" if self._fd is not None else "closed"
        owner = "owned" if self.owned else "borrowed"
        return f"<IOMMUFDBackend {state} ({owner}) users={self.users} on {self.kernel.name}>"

    # --- objects -----------------------------------------------------------------------------
    def alloc_ioas(self) -> Ioas:
        """IOMMU_IOAS_ALLOC: a new IOAS. Its `close()` unmaps everything and destroys it;
        close it before the backend's last disconnect."""
        ioas = Ioas.allocate(self.kernel, self.fd_object)
        self._ioases[ioas.id] = ioas
        return ioas

    @contextmanager
    def ioas(self) -> Iterator[Ioas]:
        """An IOAS for the duration of a `with` block (the backend stays connected as long)."""
        self.connect()
        try:
            with self.alloc_ioas() as ioas:
                yield ioas
        finally:
            self.disconnect()

    def free_id(self, obj_id: int) -> bool:
        """IOMMU_DESTROY. A failure is only logged (QEMU's iommufd_backend_free_id);
        returns whether the object was destroyed."""
        try:
            self.kernel.ioctl(self.fd, uapi.IOMMU_DESTROY, uapi.new(uapi.iommu_destroy, id=obj_id))
        except KernelError as e:
            log.error("freeing iommufd object %d failed: %s", obj_id, e)
            return False
        return True

    def alloc_hwpt(
        self,
        dev_id: int,
        pt_id: int,
        flags: int = 0,
        data_type: int | None = None,
        data: bytes | None = None,
    ) -> int:
        """IOMMU_HWPT_ALLOC: a HWPT for device `dev_id` over IOAS (or parent HWPT) `pt_id`."""
        buf = ctypes.create_string_buffer(data, len(data)) if data else None
        cmd = uapi.new(
            uapi.iommu_hwpt_alloc,
            flags=flags,
            dev_id=dev_id,
            pt_id=pt_id,
            data_type=uapi.IOMMU_HWPT_DATA_NONE if data_type is None else data_type,
            data_len=len(data or b""),
            data_uptr=ctypes.addressof(buf) if buf is not None else 0,
        )
        self.kernel.ioctl(self.fd, uapi.IOMMU_HWPT_ALLOC, cmd)
        return int(cmd.out_hwpt_id)

    # --- QEMU's single-range DMA calls ---------------------------------------------------
    def _ioas_for(self, ioas_id: int) -> Ioas:
        """The Ioas (and so the engine) that owns IOAS `ioas_id`'s mappings: the one this
        backend allocated, or an unowned view made on first use."""
        ioas = self._ioases.get(ioas_id)
        if ioas is None or ioas.closed:
            ioas = Ioas(self.kernel, self.fd_object, ioas_id, owned=False)
            self._ioases[ioas_id] = ioas
        return ioas

    def map_dma(self, ioas_id: int, va: int, length: int, iova: int, prot: Prot = Prot.RW) -> None:
        """IOMMU_IOAS_MAP of `length` bytes at `va` to the fixed `iova`, through the IOAS's
        engine like every other mapping. An EFAULT usually means `va` is a PCI BAR mapping
        (iommufd cannot map MMIO)."""
        try:
            self._ioas_for(ioas_id).map(va, length, iova, prot=prot)
        except KernelError as e:
            raise KernelError.from_errno(
                e.errno,
                "IOMMU_IOAS_MAP",
                {"ioas_id": ioas_id, "iova": iova, "length": length, "user_va": va},
                e.hint,
            ) from e

    def unmap_dma(
        self, ioas_id: int, iova: int, length: int, *, enoent_ok: bool | None = None
    ) -> int:
        """IOMMU_IOAS_UNMAP through the IOAS's engine; returns the bytes unmapped. With
        `enoent_ok` (default: the backend's `unmap_enoent_ok`, True as in QEMU) ENOENT counts
        as success and returns 0."""
        try:
            return self._ioas_for(ioas_id).unmap(iova, length)
        except KernelError as e:
            ok = self.unmap_enoent_ok if enoent_ok is None else enoent_ok
            if ok and e.errno == _errno.ENOENT:
                return 0
            # One range, so the errno-typed error (NotFoundError...) rather than BatchError.
            raise KernelError.from_errno(
                e.errno,
                "IOMMU_IOAS_UNMAP",
                {"ioas_id": ioas_id, "iova": iova, "length": length},
                e.hint,
            ) from e

    # --- dirty tracking ----------------------------------------------------------------------
    def set_dirty_tracking(self, hwpt_id: int, start: bool) -> None:
        """IOMMU_HWPT_SET_DIRTY_TRACKING: start (clearing every dirty bit) or stop."""
        cmd = uapi.new(
            uapi.iommu_hwpt_set_dirty_tracking,
            flags=uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if start else 0,
            hwpt_id=hwpt_id,
        )
        self.kernel.ioctl(self.fd, uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, cmd)

    def get_dirty_bitmap(
        self,
        hwpt_id: int,
        iova: int,
        length: int,
        page_size: int,
        bitmap: npt.NDArray[np.uint64] | None = None,
    ) -> npt.NDArray[np.uint64]:
        """IOMMU_HWPT_GET_DIRTY_BITMAP (read and clear, flags 0 as QEMU 10.0): bit i of the
        result is page `iova + i * page_size`. Bits are ORed into `bitmap` when given (the
        kernel only sets bits), so several HWPTs can report into one bitmap.

        `page_size` must be a power of two. Linux 6.12 rejects 0 (EINVAL) but takes any other
        value and writes one bit per 2**ctz(page_size) bytes, which is not what bit i above
        means; fastmap refuses such sizes with the same EINVAL before the call, and sizes
        (or checks) the bitmap by the kernel's rule, so the kernel never writes past it."""
        hwpt_id = _checks.integer("hwpt_id", hwpt_id, "u32")
        iova = _checks.integer("iova", iova, "u64")
        length = _checks.integer("length", length, "u64")
        page_size = _checks.integer("page_size", page_size, "u64")
        if page_size == 0 or page_size & (page_size - 1):
            raise KernelError.from_errno(
                _errno.EINVAL,
                "IOMMU_HWPT_GET_DIRTY_BITMAP",
                {"hwpt_id": hwpt_id, "iova": iova, "length": length, "page_size": page_size},
                "page_size must be a power of two (one bitmap bit per page_size bytes)",
            )
        # The kernel's granule: one bit per 2**ctz(page_size) bytes (== page_size here).
        granule = page_size & -page_size
        words = (-(-length // granule) + 63) // 64
        if bitmap is None:
            bitmap = np.zeros(max(words, 1), np.uint64)
        elif (
            not isinstance(bitmap, np.ndarray)
            or bitmap.dtype != np.uint64
            or not bitmap.flags.c_contiguous
            or not bitmap.flags.writeable
            or bitmap.size < words
        ):
            raise ValueError(
                f"bitmap must be a writable contiguous uint64 array of >= {words} words"
            )
        cmd = uapi.new(
            uapi.iommu_hwpt_get_dirty_bitmap,
            hwpt_id=hwpt_id,
            flags=0,
            iova=iova,
            length=length,
            page_size=page_size,
            data=bitmap.ctypes.data,
        )
        self.kernel.ioctl(self.fd, uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, cmd)
        return bitmap

    # --- device information ----------------------------------------------------------------
    def get_device_info(self, dev_id: int) -> DeviceHwInfo:
        """IOMMU_GET_HW_INFO for bound device `dev_id`."""
        buf = ctypes.create_string_buffer(_HW_INFO_BUFFER)
        cmd = uapi.new(
            uapi.iommu_hw_info,
            dev_id=dev_id,
            data_len=_HW_INFO_BUFFER,
            data_uptr=ctypes.addressof(buf),
        )
        self.kernel.ioctl(self.fd, uapi.IOMMU_GET_HW_INFO, cmd)
        n = min(int(cmd.data_len), _HW_INFO_BUFFER)
        return DeviceHwInfo(int(cmd.out_data_type), int(cmd.out_capabilities), buf.raw[:n])
