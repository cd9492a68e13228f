"""A failing attach undoes exactly the steps before it, and leaves nothing behind.

Each test fails one step (FaultyKernel, or memory the kernel refuses to pin), then checks:
no fd this process opened is left open, the address space has no container, the device
holds nothing, and (with a borrowed iommufd) IOMMU_DESTROY of every small id says ENOENT,
i.e. the iommufd's object table is empty. Then the same device attaches and detaches
cleanly, which a leaked group, binding or container would prevent.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
from collections.abc import Iterator
from typing import Literal

import pytest

from fastmap.errors import (
    ContainerSetupError,
    DeviceMismatchError,
    DeviceNotFoundError,
    GroupNotViableError,
    KernelError,
)
from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend, IommufdUnavailableError
from fastmap.lifecycle.device import VFIODevice
from fastmap.lifecycle.vfio_iommufd import IommufdContainer
from fastmap.lifecycle.vfio_legacy import open_groups
from tests.facilities import only_on_sim
from tests.lifecycle.conftest import RAM_GPA, add_sim_device
from tests.lifecycle.faulty import FaultyKernel, destroy_sweep

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def unpinnable_ram(space: AddressSpace) -> None:
    """A RAM block whose pages no kernel can pin for writing (PROT_NONE): mapping it for
    DMA fails with EFAULT, on the real kernel and the simulated one alike."""
    block = space.add_ram(PAGE, 0x800000)
    assert _libc.mprotect(block.va, block.length, 0) == 0  # PROT_NONE


@pytest.fixture
def iommufd(kernel: Kernel) -> Iterator[int]:
    fd = kernel.open("/dev/iommu")
    yield fd
    kernel.close(fd)


def assert_clean(fk: FaultyKernel, dev: VFIODevice, space: AddressSpace, *keep: int) -> None:
    assert fk.open_fds == set(keep), fk.log
    assert space.containers == []
    assert not dev.attached and dev.fd is None and dev.container is None
    assert dev.hwpt is None and dev.hiod is None and dev.backend is None
    assert open_groups(fk) == []


def reattach_works(
    fk: FaultyKernel,
    bdf: str,
    space: AddressSpace,
    backend: IOMMUFDBackend | Literal["legacy"],
    hwpt_alloc: bool = True,
) -> None:
    fk.clear()
    with VFIODevice(bdf, kernel=fk).attach(space, backend, hwpt_alloc=hwpt_alloc) as dev:
        assert dev.container is not None and dev.container.initialized
    assert space.containers == []


# --- IOMMUFD ---------------------------------------------------------------------------------
IOMMUFD_FAULTS = [
    ("open(/dev/vfio/devices/", errno.EACCES, KernelError),
    ("open(/dev/iommu)", errno.ENOENT, IommufdUnavailableError),
    ("VFIO_DEVICE_BIND_IOMMUFD", errno.EPERM, KernelError),
    ("IOMMU_GET_HW_INFO", errno.EOPNOTSUPP, KernelError),
    ("IOMMU_IOAS_ALLOC", errno.ENOMEM, KernelError),
    ("IOMMU_HWPT_ALLOC", errno.EOPNOTSUPP, KernelError),
    ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", errno.EBUSY, KernelError),
    ("listener", errno.EFAULT, KernelError),
    ("VFIO_DEVICE_GET_INFO", errno.EFAULT, KernelError),
]


@pytest.mark.parametrize(("call", "err", "exc"), IOMMUFD_FAULTS, ids=[f[0] for f in IOMMUFD_FAULTS])
def test_iommufd_step_fails_owned_backend(
    fk: FaultyKernel, edu: str, call: str, err: int, exc: type[Exception], hwpt_alloc: bool
) -> None:
    """The backend opens /dev/iommu for the device: after the failure it is closed again."""
    with AddressSpace() as space:
        space.add_ram(1 << 20, RAM_GPA)
        if call == "listener":
            unpinnable_ram(space)
        else:
            fk.fail(call, err)
            if call.startswith("open(/dev/vfio/devices/"):
                fk.fail("open(/dev/char/", err)  # QEMU's fallback node, where udev made one
        be = IOMMUFDBackend(kernel=fk)
        dev = VFIODevice(edu, kernel=fk)
        try:
            dev.attach(space, be, hwpt_alloc=hwpt_alloc)
        except exc as e:
            assert e.errno == err  # type: ignore[attr-defined]
            assert any("while attaching" in n for n in getattr(e, "__notes__", [])) or (
                call.startswith("open(/dev/vfio")
            )
        else:
            dev.detach()
            assert call in fk.pending_faults
            pytest.skip(f"{call} is not on this kernel's attach path")
        assert not be.connected and be.users == 0
        assert_clean(fk, dev, space)
        if call == "listener":
            space.remove_ram(space.blocks[-1])
        reattach_works(fk, edu, space, be, hwpt_alloc)
    assert fk.open_fds == set()


@pytest.mark.parametrize(("call", "err", "exc"), IOMMUFD_FAULTS, ids=[f[0] for f in IOMMUFD_FAULTS])
def test_iommufd_step_fails_borrowed_iommufd(
    fk: FaultyKernel,
    kernel: Kernel,
    iommufd: int,
    edu: str,
    call: str,
    err: int,
    exc: type[Exception],
    hwpt_alloc: bool,
) -> None:
    """With a pre-opened iommufd the object table can be inspected afterwards: empty."""
    if call == "open(/dev/iommu)":
        pytest.skip("a pre-opened iommufd is never opened")
    with AddressSpace() as space:
        space.add_ram(1 << 20, RAM_GPA)
        if call == "listener":
            unpinnable_ram(space)
        else:
            fk.fail(call, err)
            fk.fail("open(/dev/char/", err)
        be = IOMMUFDBackend(iommufd, kernel=fk)
        dev = VFIODevice(edu, kernel=fk)
        try:
            dev.attach(space, be, hwpt_alloc=hwpt_alloc)
        except exc as e:
            assert e.errno == err  # type: ignore[attr-defined]
        else:
            dev.detach()
            pytest.skip(f"{call} is not on this kernel's attach path")
        assert be.users == 0 and be.fd == iommufd
        assert_clean(fk, dev, space)
        assert destroy_sweep(kernel, iommufd) == {}
        if call == "listener":
            space.remove_ram(space.blocks[-1])
        reattach_works(fk, edu, space, be, hwpt_alloc)
        assert destroy_sweep(kernel, iommufd) == {}


def test_devt_mismatch_closes_the_fd(
    fk: FaultyKernel, edu: str, space: AddressSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastmap.lifecycle import sysfs

    for cls in (sysfs.HostSysfs, sysfs.SimSysfs):
        monkeypatch.setattr(cls, "devt", lambda self, fd: (1, 3))  # /dev/null's
    with IOMMUFDBackend(kernel=fk) as be:
        dev = VFIODevice(edu, kernel=fk)
        with pytest.raises(DeviceMismatchError, match="char device"):
            dev.attach(space, be)
        assert_clean(fk, dev, space, be.fd)


def test_sim_pinning_limit_fails_the_listener(space: AddressSpace) -> None:
    """The simulator's RLIMIT_MEMLOCK knob: mapping 2 MiB over a 1 MiB budget -> ENOMEM."""
    from fastmap.sim import SimKernel

    fk = FaultyKernel(SimKernel(cap_ipc_lock=False, rlimit_memlock=1 << 20))
    bdf = add_sim_device(fk)
    fd = fk.open("/dev/iommu")
    be = IOMMUFDBackend(fd, kernel=fk)
    dev = VFIODevice(bdf, kernel=fk)
    with pytest.raises(KernelError) as e:
        dev.attach(space, be)
    assert e.value.errno == errno.ENOMEM and "RLIMIT_MEMLOCK" in str(e.value)
    assert_clean(fk, dev, space, fd)
    assert destroy_sweep(fk, fd) == {}
    fk.close(fd)


def test_failure_joining_second_container_keeps_the_first_device(
    fk: FaultyKernel, two_edus: tuple[str, str], space: AddressSpace, hwpt_alloc: bool
) -> None:
    a, b = two_edus
    with IOMMUFDBackend(kernel=fk) as be:
        da = VFIODevice(a, kernel=fk).attach(space, be, hwpt_alloc=hwpt_alloc)
        c = da.container
        assert isinstance(c, IommufdContainer)
        hwpts = list(c.hwpts)
        fk.fail("VFIO_DEVICE_GET_INFO", errno.EIO)
        db = VFIODevice(b, kernel=fk)
        with pytest.raises(KernelError):
            db.attach(space, be, hwpt_alloc=hwpt_alloc)
        assert space.containers == [c] and c.devices == [da] and c.hwpts == hwpts
        assert hwpts[0].devices == [da] and db.fd is None and be.users == 2
        assert len(c.ioas.segments()) == 1
        da.detach()
    assert fk.open_fds == set()


def test_existing_container_refusing_with_other_errno_is_skipped(
    fk: FaultyKernel, two_edus: tuple[str, str], space: AddressSpace, hwpt_alloc: bool
) -> None:
    """A non-EINVAL error attaching to an existing container's HWPT skips that container
    (QEMU only traces it); the device gets a container of its own."""
    a, b = two_edus
    with IOMMUFDBackend(kernel=fk) as be:
        da = VFIODevice(a, kernel=fk).attach(space, be, hwpt_alloc=hwpt_alloc)
        fk.fail("VFIO_DEVICE_ATTACH_IOMMUFD_PT", errno.EBUSY)
        db = VFIODevice(b, kernel=fk).attach(space, be, hwpt_alloc=hwpt_alloc)
        assert db.container is not da.container
        assert space.containers == [db.container, da.container]
        db.detach()
        da.detach()
    assert fk.open_fds == set()


# --- legacy ----------------------------------------------------------------------------------
LEGACY_FAULTS = [
    ("open(/dev/vfio/", errno.EACCES, KernelError),
    ("VFIO_GROUP_GET_STATUS", errno.EFAULT, KernelError),
    ("not-viable", 0, GroupNotViableError),
    ("open(/dev/vfio/vfio)", errno.ENOENT, KernelError),
    ("api-version", 0, ContainerSetupError),
    ("no-type1", 0, ContainerSetupError),
    ("VFIO_GROUP_SET_CONTAINER", errno.EBUSY, KernelError),
    ("VFIO_SET_IOMMU", errno.EPERM, KernelError),
    ("VFIO_IOMMU_GET_INFO", errno.EFAULT, KernelError),
    ("VFIO_IOMMU_MAP_DMA", errno.ENOMEM, KernelError),
    ("listener", errno.EFAULT, KernelError),
    ("VFIO_GROUP_GET_DEVICE_FD", errno.EBUSY, KernelError),
    ("VFIO_DEVICE_GET_INFO", errno.EFAULT, KernelError),
]


def _inject_legacy(fk: FaultyKernel, space: AddressSpace, call: str, err: int) -> None:
    if call == "listener":
        unpinnable_ram(space)
    elif call == "not-viable":
        fk.override("VFIO_GROUP_GET_STATUS", _clear_flags)
    elif call == "api-version":
        fk.override("VFIO_GET_API_VERSION", lambda arg, ret: 1)
    elif call == "no-type1":
        fk.override("VFIO_CHECK_EXTENSION", lambda arg, ret: 0)
    elif call == "VFIO_IOMMU_MAP_DMA":
        # The second of two RAM blocks: the first must be unmapped again.
        space.add_ram(PAGE, 0x800000)
        fk.fail(call, err, nth=2)
    else:
        fk.fail(call, err)


def _clear_flags(arg: object, ret: int) -> int:
    arg.flags = 0  # type: ignore[attr-defined]
    return ret


@pytest.mark.parametrize(("call", "err", "exc"), LEGACY_FAULTS, ids=[f[0] for f in LEGACY_FAULTS])
def test_legacy_step_fails(
    fk: FaultyKernel, edu: str, call: str, err: int, exc: type[Exception]
) -> None:
    with AddressSpace() as space:
        space.add_ram(1 << 20, RAM_GPA)
        _inject_legacy(fk, space, call, err)
        dev = VFIODevice(edu, kernel=fk)
        with pytest.raises(exc) as info:
            dev.attach(space, "legacy")
        if err:
            assert info.value.errno == err  # type: ignore[attr-defined]
        assert not fk.pending_faults
        assert_clean(fk, dev, space)
        for b in space.blocks[1:]:
            space.remove_ram(b)
        reattach_works(fk, edu, space, "legacy")
    assert fk.open_fds == set()


@only_on_sim
def test_legacy_failure_of_second_device_keeps_group_and_container(
    fk: FaultyKernel, space: AddressSpace
) -> None:
    a = add_sim_device(fk, group=7)
    b = add_sim_device(fk, group=7)
    da = VFIODevice(a, kernel=fk).attach(space, "legacy")
    c = da.container
    fk.fail("VFIO_DEVICE_GET_INFO", errno.EIO)
    db = VFIODevice(b, kernel=fk)
    with pytest.raises(KernelError):
        db.attach(space, "legacy")
    assert db.fd is None and space.containers == [c] and da.group is not None
    assert da.group.devices == [da] and open_groups(fk) == [da.group]
    da.detach()
    assert fk.open_fds == set() and open_groups(fk) == []


def test_unknown_device_legacy(fk: FaultyKernel, space: AddressSpace) -> None:
    dev = VFIODevice("0000:7f:1f.7", kernel=fk)
    with pytest.raises(DeviceNotFoundError, match="no such PCI device"):
        dev.attach(space, "legacy")
    assert_clean(fk, dev, space)


# --- the order of the undo steps ----------------------------------------------------------------
def _after_injection(fk: FaultyKernel) -> list[str]:
    i = next(i for i, e in enumerate(fk.log) if "INJECTED" in e)
    return fk.log[i + 1 :]


def _fd_of(fk: FaultyKernel, prefix: str) -> int:
    return int(next(e for e in fk.log if e.startswith(f"open {prefix}")).rsplit(" ", 1)[1])


def test_iommufd_unwind_order(
    fk: FaultyKernel, edu: str, space: AddressSpace, hwpt_alloc: bool
) -> None:
    """GET_INFO fails last: DETACH_PT, HWPT freed, IOAS freed, iommufd closed, device fd
    closed: the steps before it, newest first (as QEMU's error path)."""
    fk.fail("VFIO_DEVICE_GET_INFO", errno.EIO)
    be = IOMMUFDBackend(kernel=fk)
    with pytest.raises(KernelError):
        VFIODevice(edu, kernel=fk).attach(space, be, hwpt_alloc=hwpt_alloc)
    iommufd = _fd_of(fk, "/dev/iommu")
    dev_fd = _fd_of(fk, "/dev/vfio/devices/")
    ioas = next(int(e.split("out_ioas_id=")[1]) for e in fk.log if "out_ioas_id=" in e)
    expected = [f"VFIO_DEVICE_DETACH_IOMMUFD_PT fd {dev_fd}"]
    if hwpt_alloc:  # a kernel-made domain goes with the detach
        hwpt = next(int(e.split("out_hwpt_id=")[1]) for e in fk.log if "out_hwpt_id=" in e)
        expected.append(f"IOMMU_DESTROY fd {iommufd} id={hwpt}")
    expected += [f"IOMMU_DESTROY fd {iommufd} id={ioas}", f"close {iommufd}", f"close {dev_fd}"]
    assert _after_injection(fk) == expected


@pytest.mark.parametrize("call", ["VFIO_SET_IOMMU", "VFIO_DEVICE_GET_INFO"])
def test_legacy_unwind_order(fk: FaultyKernel, edu: str, space: AddressSpace, call: str) -> None:
    fk.fail(call, errno.EIO)
    with pytest.raises(KernelError):
        VFIODevice(edu, kernel=fk).attach(space, "legacy")
    container = _fd_of(fk, "/dev/vfio/vfio ")
    group = next(
        int(e.rsplit(" ", 1)[1])
        for e in fk.log
        if e.startswith("open /dev/vfio/") and "/vfio/vfio " not in e
    )
    expected = []
    if call == "VFIO_DEVICE_GET_INFO":
        dev_fd = next(e for e in fk.log if e.startswith("VFIO_GROUP_GET_DEVICE_FD")).split()[-1]
        expected = [f"close {dev_fd}", f"VFIO_IOMMU_UNMAP_DMA fd {container}"]
    expected += [
        f"VFIO_GROUP_UNSET_CONTAINER fd {group}",
        f"close {container}",
        f"close {group}",
    ]
    assert _after_injection(fk) == expected
