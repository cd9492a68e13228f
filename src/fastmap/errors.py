"""Typed errors that say which call failed, with what, and what probably caused it.

Every failing kernel call (real or simulated) raises a KernelError: an OSError whose errno is
the kernel's, and whose message names the call (ioctl numbers are decoded to their uAPI
names), the errno's symbolic name, the struct's field values, and a hint for the usual cause:

    IOMMU_IOAS_MAP failed: EINVAL (Invalid argument) [flags=0x7 ioas_id=0x1 user_va=0x...
    length=0x800 iova=0x1000000]; hint: length, iova or the user VA's page offset is not
    a multiple of the IOAS's IOVA alignment (IOMMU_IOAS_IOVA_RANGES reports it) ...

Each errno family has its own subclass (IovaInUseError for EEXIST, ...), so callers can
catch exactly what they expect; `KernelError.from_errno` picks it.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from fastmap._layout import SIZE_FIELDS

if TYPE_CHECKING:
    from fastmap.allocator import Fit, IovaRange


class FastmapError(Exception):
    """Base of every error fastmap raises on purpose."""


class RamInUseError(FastmapError, RuntimeError):
    """A RamBlock was closed while a device mapping still holds it: unmap it first.
    Nothing changed; `errno` is EBUSY."""

    errno = _errno.EBUSY


class KernelError(FastmapError, OSError):
    """A kernel call (open/close/ioctl/pread/pwrite) returned -errno.

    Attributes: `errno` (int), `call` (e.g. "IOMMU_IOAS_MAP" or "open(/dev/iommu)"),
    `arguments` (the struct's fields, or other call arguments), `hint` (likely cause or None).
    """

    errno: int
    _by_errno: ClassVar[dict[int, type[KernelError]]] = {}
    _errnos: ClassVar[tuple[int, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for e in cls._errnos:
            KernelError._by_errno[e] = cls

    def __init__(
        self,
        err: int,
        call: str,
        arguments: Mapping[str, object] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(err, os.strerror(err))
        self.call = call
        self.arguments: dict[str, object] = dict(arguments or {})
        self.hint = hint if hint is not None else hint_for(call, err)

    @classmethod
    def from_errno(
        cls,
        err: int,
        call: str,
        arguments: Mapping[str, object] | None = None,
        hint: str | None = None,
    ) -> KernelError:
        """The KernelError subclass for `err`. Each is also the builtin OSError subclass
        Python picks for its errno (NotFoundError is a FileNotFoundError, ...); an errno with
        no class of its own gets KernelError joined with that builtin (NotADirectoryError for
        ENOTDIR, ...), so callers that catch those behave as with os.* calls."""
        chosen = cls._by_errno.get(err)
        if chosen is None:
            chosen = _with_builtin(type(OSError(err, "")))
        return chosen(err, call, arguments, hint)

    @property
    def errno_name(self) -> str:
        """The symbolic errno, e.g. 'EINVAL'."""
        return _errno.errorcode.get(self.errno, f"errno {self.errno}")

    def __str__(self) -> str:
        msg = f"{self.call} failed: {self.errno_name} ({self.strerror})"
        shown = format_arguments(self.arguments)
        if shown:
            msg += f" [{shown}]"
        if self.hint:
            msg += f"; hint: {self.hint}"
        return msg

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errno, self.call, self.arguments, self.hint))


def format_arguments(arguments: Mapping[str, object]) -> str:
    """`name=value` pairs; the size header and zero reserved fields are left out."""
    parts = []
    for name, value in arguments.items():
        if name in SIZE_FIELDS:
            continue
        if name.startswith(("reserved", "pad")) and not (
            any(value) if isinstance(value, list) else value
        ):
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{name}={value:#x}" if value > 9 else f"{name}={value}")
        else:
            parts.append(f"{name}={value!r}")
    return " ".join(parts)


_BUILTIN_TWINS: dict[type[OSError], type[KernelError]] = {}


def _with_builtin(builtin: type[OSError]) -> type[KernelError]:
    """KernelError, or a cached subclass of it that is also `builtin` (e.g. NotADirectoryError)."""
    if builtin is OSError:
        return KernelError
    twin = _BUILTIN_TWINS.get(builtin)
    if twin is None:
        name = builtin.__name__.removesuffix("Error") + "KernelError"
        twin = type(name, (KernelError, builtin), {"__module__": __name__})
        _BUILTIN_TWINS[builtin] = twin
    return twin


class NotFoundError(KernelError, FileNotFoundError):
    """ENOENT: no such object id, no such IOVA range, or no such path (a FileNotFoundError
    too, as OSError(ENOENT) is)."""

    _errnos = (_errno.ENOENT,)


class IovaInUseError(KernelError, FileExistsError):
    """EEXIST: the fixed IOVA range overlaps an existing mapping."""

    _errnos = (_errno.EEXIST,)


class BusyError(KernelError):
    """EBUSY: the object is still in use (attached devices, HWPTs, pinned areas)."""

    _errnos = (_errno.EBUSY,)


class InvalidArgumentError(KernelError):
    """EINVAL: a field value is wrong (alignment, size, flags combination)."""

    _errnos = (_errno.EINVAL,)


class NotSupportedError(KernelError):
    """EOPNOTSUPP: unknown flag bits, non-zero reserved fields or a missing capability."""

    _errnos = (_errno.EOPNOTSUPP,)


class UnknownIoctlError(KernelError):
    """ENOTTY: this kernel does not know the ioctl (too old, or the wrong kind of fd)."""

    _errnos = (_errno.ENOTTY,)


class StructTooBigError(KernelError):
    """E2BIG: the struct is longer than the kernel's and the extra bytes are not zero."""

    _errnos = (_errno.E2BIG,)


class BadAddressError(KernelError):
    """EFAULT: a user pointer the kernel had to read, write or pin is not valid memory."""

    _errnos = (_errno.EFAULT,)


class NoMemoryError(KernelError):
    """ENOMEM: out of memory, usually the RLIMIT_MEMLOCK pinning budget."""

    _errnos = (_errno.ENOMEM,)


class ReservedRangeError(KernelError):
    """EADDRINUSE: the range collides with reserved IOVA (aperture, MSI window)."""

    _errnos = (_errno.EADDRINUSE,)


class IovaSpaceError(KernelError):
    """ENOSPC: no free IOVA hole large enough (or a Type1 entry limit)."""

    _errnos = (_errno.ENOSPC,)


class RangeOverflowError(KernelError):
    """EOVERFLOW: iova + length (or va + length) wraps around."""

    _errnos = (_errno.EOVERFLOW,)


class BufferTooSmallError(KernelError):
    """EMSGSIZE: the caller's array is too small; the kernel reported the needed count."""

    _errnos = (_errno.EMSGSIZE,)


class PermissionDeniedError(KernelError, PermissionError):
    """EPERM/EACCES: missing privilege, or a policy refusal (e.g. unsafe interrupts)."""

    _errnos = (_errno.EPERM, _errno.EACCES)


class NoDeviceError(KernelError):
    """ENODEV: the device, driver or compat IOAS is not there."""

    _errnos = (_errno.ENODEV,)


class BadFdError(KernelError):
    """EBADF/EBADFD: an fd argument is not open, or is not the kind of file expected."""

    _errnos = (_errno.EBADF, _errno.EBADFD)


# Likely causes, most specific first: (call prefix or None for any call, errno) -> hint.
_MAP_CALLS = ("IOMMU_IOAS_MAP", "IOMMU_IOAS_COPY", "VFIO_IOMMU_MAP_DMA")
_HINTS: tuple[tuple[tuple[str, ...] | None, int, str], ...] = (
    (
        ("open(/dev/iommu",),
        _errno.ENOENT,
        "/dev/iommu does not exist: the kernel lacks CONFIG_IOMMUFD or the iommufd module is "
        "not loaded (modprobe iommufd)",
    ),
    (
        ("open(/dev/iommu",),
        _errno.ENODEV,
        "no iommufd driver: load the iommufd module (modprobe iommufd)",
    ),
    (
        ("open(/dev/vfio",),
        _errno.ENOENT,
        "no such VFIO node: bind the device to vfio-pci (driver_override + drivers_probe) and "
        "check /sys/bus/pci/devices/<bdf>/vfio-dev/",
    ),
    (("open(",), _errno.ENOENT, "no such device node"),
    (
        ("open(",),
        _errno.EACCES,
        "permission denied: run as root or add a udev rule granting access to the node",
    ),
    (
        ("open(/dev/vfio",),
        _errno.EBUSY,
        "the VFIO device or group is already open (by another process or the group path)",
    ),
    (
        _MAP_CALLS,
        _errno.ENOMEM,
        "pinning exceeded RLIMIT_MEMLOCK (raise it with ulimit -l / prlimit, or grant "
        "CAP_IPC_LOCK)",
    ),
    (
        _MAP_CALLS,
        _errno.EFAULT,
        "the user VA range is not mapped memory the kernel can pin, or is a PCI BAR/MMIO "
        "region (iommufd cannot map those through IOAS_MAP)",
    ),
    (
        _MAP_CALLS,
        _errno.EINVAL,
        "length, iova or the user VA's page offset is not a multiple of the IOAS's IOVA "
        "alignment (IOMMU_IOAS_IOVA_RANGES reports it), the fixed IOVA is in a reserved "
        "range or outside the aperture, or neither READABLE nor WRITEABLE was given",
    ),
    (_MAP_CALLS, _errno.EEXIST, "the fixed IOVA range overlaps an existing mapping"),
    (
        _MAP_CALLS,
        _errno.ENOSPC,
        "no free IOVA hole of this size and alignment inside the allowed ranges",
    ),
    (_MAP_CALLS, _errno.EPERM, "a WRITEABLE mapping of read-only memory"),
    (
        ("IOMMU_IOAS_UNMAP",),
        _errno.ENOENT,
        "nothing is mapped in the range, or the range cuts through a mapping (unmap never "
        "splits an area: cover whole mappings)",
    ),
    (
        ("IOMMU_DESTROY",),
        _errno.EBUSY,
        "the object still has users: detach devices and destroy HWPTs that use it first",
    ),
    (
        ("IOMMU_HWPT_ALLOC",),
        _errno.EOPNOTSUPP,
        "the device's IOMMU lacks the requested capability (e.g. dirty tracking: check "
        "IOMMU_GET_HW_INFO out_capabilities), or flags/reserved fields are not zero",
    ),
    (
        ("VFIO_DEVICE_BIND_IOMMUFD", "VFIO_SET_IOMMU"),
        _errno.EPERM,
        "the platform lacks interrupt remapping; the kernel needs "
        "iommufd.allow_unsafe_interrupts=1 / vfio_iommu_type1.allow_unsafe_interrupts=1",
    ),
    (
        ("VFIO_DEVICE_BIND_IOMMUFD",),
        _errno.EINVAL,
        "the device fd is already bound (a cdev binds once: close it and open the cdev again "
        "to bind elsewhere), or flags/argsz are wrong",
    ),
    (
        ("VFIO_DEVICE_GET_IRQ_INFO", "VFIO_DEVICE_SET_IRQS"),
        _errno.EINVAL,
        "index is not an IRQ index of this device (VFIO_DEVICE_GET_INFO num_irqs; PCI: "
        "INTX=0 MSI=1 MSIX=2 ERR=3 REQ=4), start/count fall outside its vectors, or the "
        "flags' DATA/ACTION bits are not exactly one each",
    ),
    (
        ("VFIO_DEVICE_GET_REGION_INFO",),
        _errno.EINVAL,
        "index is not a region of this device (VFIO_DEVICE_GET_INFO num_regions; PCI: BAR0-5 "
        "=0-5, ROM=6, CONFIG=7, VGA=8), or argsz is below the struct's size",
    ),
    (
        ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", "VFIO_DEVICE_DETACH_IOMMUFD_PT"),
        _errno.EINVAL,
        "the device fd is not bound to an iommufd yet (VFIO_DEVICE_BIND_IOMMUFD comes "
        "first), or flags/argsz are wrong",
    ),
    (
        ("VFIO_DEVICE",),
        _errno.EINVAL,
        "a field is wrong (argsz, flags, an index), or the cdev fd is not bound to an iommufd "
        "yet (an unbound cdev answers EINVAL to every call but the bind)",
    ),
    (
        None,
        _errno.EADDRINUSE,
        "the range intersects reserved IOVA (outside the IOMMU aperture, the MSI window or a "
        "reserved region), or a reservation hits an allowed range or an existing mapping",
    ),
    (
        None,
        _errno.ENOTTY,
        "the kernel does not know this ioctl (too old for it, or the fd is the wrong kind)",
    ),
    (
        None,
        _errno.E2BIG,
        "the struct is larger than this kernel's version and its extra bytes are not zero",
    ),
    (None, _errno.EOPNOTSUPP, "unknown flag bits or a non-zero reserved field"),
    (None, _errno.EOVERFLOW, "address + length wraps around the 64-bit space"),
    (None, _errno.EMSGSIZE, "the output array is too small; retry with the returned count"),
    (None, _errno.ENOENT, "no object with that id (ids are per iommufd)"),
    (None, _errno.EBADF, "an fd argument is not open in this process (or this kernel)"),
)


def hint_for(call: str, err: int) -> str | None:
    """The likely cause of `err` from `call`, or None if there is no good guess."""
    for prefixes, e, hint in _HINTS:
        if e == err and (prefixes is None or call.startswith(prefixes)):
            return hint
    return None


class BatchError(KernelError):
    """A batch map/unmap failed at one entry; the batch was rolled back.

    Attributes beyond KernelError's: `index` (the failing entry), `rollback_failed` (undoing
    the entries before it failed too, so the IOAS is not as it was: very rare, e.g. memory
    freed under a rollback). `arguments` holds the entry's iova/va/length.

    A BatchError is also the errno's own class: `BatchError(errno.EEXIST, ...)` is an
    instance of IovaInUseError, so `except IovaInUseError` catches a batch's EEXIST too.
    """

    _typed: ClassVar[dict[type[KernelError], type[BatchError]]] = {}

    def __new__(cls, err: int, *args: Any, **kwargs: Any) -> BatchError:
        base = KernelError._by_errno.get(err)
        if cls is BatchError and base is not None:
            cls = BatchError._typed.get(base) or BatchError._typed.setdefault(
                base,
                type(
                    f"Batch{base.__name__}",
                    (BatchError, base),
                    {"_errnos": (), "__module__": __name__, "__doc__": BatchError.__doc__},
                ),
            )
        # OSError.__new__ fills errno/strerror itself once a class defines __new__ (and its
        # __init__ then does nothing): give it exactly what KernelError.__init__ would.
        return super().__new__(cls, err, os.strerror(err))

    def __init__(
        self,
        err: int,
        call: str,
        index: int,
        arguments: Mapping[str, object] | None = None,
        hint: str | None = None,
        rollback_failed: bool = False,
    ) -> None:
        super().__init__(err, call, {"entry": index, **(arguments or {})}, hint)
        self.index = index
        self.rollback_failed = rollback_failed

    @property
    def entry(self) -> int:
        """The failing entry's index in the batch (the `entry=` of the message); `index`."""
        return self.index

    def __str__(self) -> str:
        undone = (
            "rollback FAILED: the IOAS is not as it was"
            if self.rollback_failed
            else "rolled back: the IOAS is as it was before the batch"
        )
        return f"{super().__str__()}; {undone}"

    def __reduce__(self) -> tuple[Any, ...]:
        args = {k: v for k, v in self.arguments.items() if k != "entry"}
        return (
            BatchError,  # picks the errno's class again
            (self.errno, self.call, self.index, args, self.hint, self.rollback_failed),
        )


# ---- the VFIO device lifecycle: failures that are not one call's errno, and the conditions
# QEMU only warns about (a failing call during attach raises its own KernelError) ----------


class VFIOError(FastmapError):
    """A VFIO device could not be found, opened or attached (not a single call's errno)."""


class DeviceNotFoundError(VFIOError, LookupError):
    """No such device, or it is not bound to vfio-pci (no vfio-dev/ or iommu_group)."""


class DeviceMismatchError(VFIOError):
    """The opened VFIO cdev is not the char device sysfs names (stale or raced node)."""


class GroupNotViableError(VFIOError):
    """VFIO_GROUP_GET_STATUS says the IOMMU group is not viable: a device in it is bound to
    a host driver. Bind every device of the group to vfio-pci (or unbind it)."""


class ContainerSetupError(VFIOError):
    """The legacy container cannot be set up (VFIO API version, no Type1 IOMMU model)."""


class LifecycleWarning(UserWarning):
    """Base of the warnings the lifecycle emits where QEMU warns and carries on."""


class IovaRangesFallbackWarning(LifecycleWarning):
    """IOMMU_IOAS_IOVA_RANGES failed: the container assumes the whole 64-bit IOVA space
    and the host page size, which may let maps fail later (QEMU does the same)."""


class DirtyTrackingWarning(LifecycleWarning):
    """A device joined a dirty-tracking container through an IOMMU without dirty tracking:
    its DMA writes will not show in the container's dirty bitmaps."""


# ---- the IOVA allocator and translation map (fastmap.allocator): refused requests, each
# with the errno the engine returned ------------------------------------------------------


class AllocatorError(FastmapError):
    """Base class for allocator and translation-map errors. ``index`` names the failing
    element of a batch call (None otherwise)."""

    def __init__(self, message: str, err: int, index: int | None = None) -> None:
        super().__init__(message)
        self.errno = err
        self.index = index


class InvalidRequestError(AllocatorError, ValueError):
    """A malformed request: zero length, alignment not a power of two, a range that wraps
    past 2**64, or a value that is not a u64 (EINVAL / EOVERFLOW)."""


class AllocationError(AllocatorError, MemoryError):
    """No free gap can hold the request (ENOSPC). Says what was asked for and the largest
    gap there was, which tells fragmentation (a big gap, misaligned) from exhaustion."""

    def __init__(
        self,
        message: str,
        *,
        length: int,
        align: int,
        hint_va: int | None = None,
        fit: Fit = "first",
        index: int | None = None,
        largest_free_gap: IovaRange | None = None,
    ) -> None:
        super().__init__(message, _errno.ENOSPC, index)
        self.length = length
        self.align = align
        self.hint_va = hint_va
        self.fit = fit
        self.largest_free_gap = largest_free_gap


class RangeInUseError(AllocatorError, ValueError):
    """The range overlaps an allocation or mapping (EEXIST), or in a TranslationMap the VA
    range overlaps a mapping (EADDRINUSE); ``space`` says which, "iova" or "va"."""

    def __init__(self, message: str, err: int, *, space: str, start: int, last: int) -> None:
        super().__init__(message, err)
        self.space = space
        self.start = start
        self.last = last


class RangeReservedError(AllocatorError, ValueError):
    """The range touches a reserved range or lies outside the allowed ranges
    (EADDRNOTAVAIL), or a reserved range was to be freed (EPERM)."""


class RangeNotFoundError(AllocatorError, LookupError):
    """Nothing is allocated (or mapped) where the call said (ENOENT). ``index`` names the
    element of a batch."""

    def __init__(self, message: str, *, address: int, index: int | None = None) -> None:
        super().__init__(message, _errno.ENOENT, index)
        self.address = address
