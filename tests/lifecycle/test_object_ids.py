"""HWPT and device ids are typed (fastmap.object_id): they hold the iommufd they live in, so
a stale or foreign id raises StaleObjectError instead of naming another backend's object
that got the same number (issue 11, the class of defect 8 beyond the Ioas)."""

from __future__ import annotations

import numpy as np
import pytest

from fastmap import DeviceId, HwptId, StaleObjectError
from fastmap.dirty import DirtyHarvester
from fastmap.kernel import Fd, Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice
from fastmap.lifecycle.sysfs import sysfs_for
from fastmap.lifecycle.vfio_iommufd import attach_pt, bind, detach_pt, open_cdev


def _cdev(kernel: Kernel, bdf: str) -> Fd:
    return open_cdev(kernel, sysfs_for(kernel), f"/sys/bus/pci/devices/{bdf}")


def test_attached_device_has_typed_ids(
    kernel: Kernel, edu: str, space: AddressSpace, hwpt_alloc: bool
) -> None:
    with IOMMUFDBackend(kernel=kernel) as be:
        dev = VFIODevice(edu, kernel=kernel).attach(space, be, hwpt_alloc=hwpt_alloc)
        with dev:
            assert isinstance(dev.dev_id, DeviceId) and dev.dev_id.fd is be.fd_object
            assert dev.hwpt is not None and isinstance(dev.hwpt.id, HwptId)
            assert dev.hwpt.id.fd is be.fd_object and not dev.hwpt.id.stale
            assert dev.hiod is not None
            assert be.get_device_info(dev.dev_id).type == dev.hiod.type
        assert dev.dev_id is None


def test_stale_and_foreign_ids_are_refused(kernel: Kernel, edu: str) -> None:
    old = IOMMUFDBackend(kernel=kernel)
    old.connect()
    with _cdev(kernel, edu) as dev_fd:
        dev_id = bind(dev_fd, old)
        ioas = old.alloc_ioas()
        hwpt = old.alloc_hwpt(dev_id, ioas.id)
        assert isinstance(hwpt, HwptId) and hwpt == int(hwpt)
    old.disconnect()  # the fd closes: the kernel destroys the HWPT and the IOAS with it
    assert hwpt.stale and dev_id.stale

    with IOMMUFDBackend(kernel=kernel) as new, _cdev(kernel, edu) as dev_fd:
        new_dev = bind(dev_fd, new)
        ioas = new.alloc_ioas()
        fresh = new.alloc_hwpt(new_dev, ioas.id)
        # A new iommufd numbers its objects from the start again: plain ints would name
        # `fresh` and the new device.
        for call in (
            lambda: new.free_id(hwpt),
            lambda: new.set_dirty_tracking(hwpt, False),
            lambda: new.get_device_info(dev_id),
            lambda: new.alloc_hwpt(dev_id, ioas.id),
            lambda: new.alloc_hwpt(new_dev, hwpt),
            lambda: attach_pt(dev_fd, hwpt),
            lambda: DirtyHarvester(kernel, new.fd_object).harvest([hwpt], [(0, 4096)]),
        ):
            with pytest.raises(StaleObjectError):
                call()
        # A live id of another backend is refused too.
        with IOMMUFDBackend(kernel=kernel) as other:
            with pytest.raises(StaleObjectError, match="lives in"):
                other.get_device_info(new_dev)
            with pytest.raises(StaleObjectError, match="lives in"):
                other.free_id(fresh)
        # `fresh` is intact: the device attaches to it.
        assert attach_pt(dev_fd, fresh) == fresh
        detach_pt(dev_fd)
        assert new.free_id(fresh)
        ioas.close()


def test_ids_stay_plain_ints_where_a_number_is_expected(kernel: Kernel) -> None:
    with IOMMUFDBackend(kernel=kernel) as be:
        fd = be.fd_object
        h = HwptId(7, fd)
        assert h == 7 and hash(h) == hash(7) and np.uint32(h) == 7
        assert repr(h) == f"HwptId(7, fd={fd.fd})"
        with pytest.raises(ValueError, match="hwpt_id"):
            HwptId(1 << 32, fd)
        with pytest.raises(ValueError, match="Fd"):
            DeviceId(1, 3)  # type: ignore[arg-type]
