"""Errors and API points of issue 12: each hint names the cause it can see, the same
failure raises the same class on every path, and the API says what it means."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from fastmap import (
    AddressSpace,
    DirtyTracker,
    DmaMemory,
    Ioas,
    IOMMUFDBackend,
    VFIODevice,
    uapi,
)
from fastmap.errors import (
    BatchError,
    DeviceNotFoundError,
    InvalidArgumentError,
    IovaInUseError,
)
from fastmap.kernel import Fd
from fastmap.lifecycle import vfio_iommufd
from fastmap.lifecycle.backend import DeviceHwInfo
from fastmap.lifecycle.device import DeviceInfo
from fastmap.lifecycle.host_iommu_device import HostIOMMUDevice
from fastmap.lifecycle.sysfs import PCI_DEVICES, sysfs_for
from fastmap.pci_address import normalize_bdf
from fastmap.sim import DmaFault, SimKernel

PAGE = 4096
BIND_FIRST = "bound to an iommufd"


@pytest.fixture
def bound(sim: SimKernel, backend: IOMMUFDBackend) -> Iterator[Fd]:
    bdf = str(sim.machine.add_pci_device()["bdf"])
    with vfio_iommufd.open_cdev(sim, sysfs_for(sim), f"{PCI_DEVICES}/{bdf}") as fd:
        vfio_iommufd.bind(fd, backend)
        yield fd


# --- VFIO hints by call and errno ----------------------------------------------------------
def test_a_second_bind_says_already_bound(bound: Fd, backend: IOMMUFDBackend) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        vfio_iommufd.bind(bound, backend)
    assert "already bound" in str(info.value) and BIND_FIRST not in str(info.value)


def test_a_bad_irq_index_names_the_index(bound: Fd) -> None:
    cmd = uapi.new(uapi.vfio_irq_info, index=99)
    with pytest.raises(InvalidArgumentError) as info:
        bound.ioctl(uapi.VFIO_DEVICE_GET_IRQ_INFO, cmd)
    assert "num_irqs" in str(info.value) and BIND_FIRST not in str(info.value)


def test_a_bad_region_index_names_the_index(bound: Fd) -> None:
    cmd = uapi.new(uapi.vfio_region_info, index=99)
    with pytest.raises(InvalidArgumentError) as info:
        bound.ioctl(uapi.VFIO_DEVICE_GET_REGION_INFO, cmd)
    assert "num_regions" in str(info.value) and BIND_FIRST not in str(info.value)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_missing_device_is_named_missing(sim: SimKernel, legacy: bool) -> None:
    sim.machine.add_pci_device(bdf="0000:00:03.0")
    with IOMMUFDBackend(kernel=sim) as be, AddressSpace() as space:
        dev = VFIODevice("0000:00:09.0", kernel=sim)
        with pytest.raises(DeviceNotFoundError) as info:
            dev.attach(space, "legacy" if legacy else be)
    msg = str(info.value)
    assert "no such PCI device" in msg and "0000:00:03.0" in msg and "vfio-pci" not in msg


# --- PCI addresses -------------------------------------------------------------------------------
def test_the_short_bdf_is_completed_and_a_bad_one_refused(sim: SimKernel) -> None:
    assert normalize_bdf("00:03.0") == "0000:00:03.0"
    assert normalize_bdf("0000:0A:1f.7") == "0000:0a:1f.7"
    assert VFIODevice("00:03.0", kernel=sim).name == "0000:00:03.0"
    for bad in ("0:3.0", "00:03", "0000:00:03.8", "00:20.0", "edu"):
        with pytest.raises(ValueError, match="not a PCI address"):
            VFIODevice(bad, kernel=sim)


def test_the_short_bdf_attaches(sim: SimKernel) -> None:
    sim.machine.add_pci_device(bdf="0000:00:03.0")
    with IOMMUFDBackend(kernel=sim) as be, AddressSpace() as space:
        space.add_ram(1 << 20, 0x100000)
        with VFIODevice("00:03.0", kernel=sim).attach(space, be) as dev:
            assert dev.attached


# --- one class per failure ---------------------------------------------------------------
def test_eexist_is_iova_in_use_on_every_path(backend: IOMMUFDBackend, device_ioas: Ioas) -> None:
    mem = np.zeros(4 * PAGE, np.uint8)
    base = mem.ctypes.data - mem.ctypes.data % PAGE + PAGE
    device_ioas.map(base, PAGE, 0x100000)
    failures = []
    for attempt in (
        lambda: device_ioas.map(base + PAGE, PAGE, 0x100000),
        lambda: device_ioas.map_batch([base + PAGE], [PAGE], [0x100000]),
        lambda: backend.map_dma(device_ioas.id, base + PAGE, PAGE, 0x100000),
    ):
        with pytest.raises(IovaInUseError) as info:
            attempt()
        failures.append(info.value)
    assert all(e.errno == errno.EEXIST for e in failures)


def test_batch_error_entry_is_the_entry_of_the_message(device_ioas: Ioas) -> None:
    mem = np.zeros(8 * PAGE, np.uint8)
    base = mem.ctypes.data - mem.ctypes.data % PAGE + PAGE
    vas = [base, base + PAGE, base + 2 * PAGE + 16]  # entry 2 is not page-aligned
    with pytest.raises(BatchError) as info:
        device_ioas.map_batch(vas, [PAGE] * 3, [0x100000, 0x101000, 0x102000])
    assert info.value.entry == info.value.index == 2 and "entry=2" in str(info.value)
    assert "alignment 0x1000" in str(info.value)


# --- hints from what fastmap knows ---------------------------------------------------------
def test_a_map_into_the_msi_window_names_it(device_ioas: Ioas) -> None:
    with DmaMemory(2 * PAGE) as mem:
        with pytest.raises(InvalidArgumentError, match=r"MSI window") as info:
            device_ioas.map(mem, iova=0xFEDFF000)
        assert "0xfee00000, 0xfeefffff" in str(info.value)


def test_huge_pages_with_mappings_says_unmap_first(device_ioas: Ioas) -> None:
    device_ioas.map(np.zeros(PAGE, np.uint8))
    with pytest.raises(InvalidArgumentError, match="unmap everything"):
        device_ioas.huge_pages = False
    device_ioas.unmap_all()
    device_ioas.huge_pages = False
    assert not device_ioas.huge_pages


# --- the API says what it means ----------------------------------------------------------------
def test_attach_needs_an_explicit_choice(sim: SimKernel) -> None:
    bdf = str(sim.machine.add_pci_device()["bdf"])
    with AddressSpace() as space:
        dev = VFIODevice(bdf, kernel=sim)
        with pytest.raises(TypeError, match="'legacy'"):
            dev.attach(space, None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="backend"):
            dev.attach(space)  # type: ignore[call-arg]
        assert not dev.attached


def test_read_device_info_returns_it(sim: SimKernel) -> None:
    bdf = str(sim.machine.add_pci_device()["bdf"])
    with (
        IOMMUFDBackend(kernel=sim) as be,
        AddressSpace() as space,
        VFIODevice(bdf, kernel=sim).attach(space, be) as dev,
    ):
        info = dev.read_device_info()
        assert isinstance(info, DeviceInfo) and info.pci
        assert (info.num_regions, info.num_irqs) == (dev.num_regions, dev.num_irqs)
        assert info.num_regions >= uapi.VFIO_PCI_CONFIG_REGION_INDEX + 1
        assert "pci" in repr(info)


@pytest.mark.parametrize(
    "call",
    [
        lambda io, buf: io.map(buf, 4096.0),
        lambda io, buf: io.map(buf.ctypes.data, 4096.0),
        lambda io, buf: io.map_batch([buf.ctypes.data], np.array([4096.0]), "dense"),
        lambda io, buf: io.unmap(0x100000, 4096.0),
        lambda io, buf: io.copy_from(io, 0x100000, 4096.0),
        lambda io, buf: io.map_file(os.memfd_create("f"), 0, 4096.0),
    ],
    ids=["map-buffer", "map-va", "map_batch", "unmap", "copy_from", "map_file"],
)
def test_float_lengths_are_refused(
    device_ioas: Ioas, call: Callable[[Ioas, np.ndarray], object]
) -> None:
    buf = np.zeros(2 * PAGE, np.uint8)
    with pytest.raises(TypeError, match=r"integer|expected integers"):
        call(device_ioas, buf)
    assert len(device_ioas) == 0


def test_reprs_are_readable() -> None:
    hw = DeviceHwInfo(
        uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD, uapi.IOMMU_HW_CAP_DIRTY_TRACKING, bytes(32)
    )
    assert repr(hw) == "DeviceHwInfo(intel-vtd, capabilities=0x1 [DIRTY_TRACKING], data=32 bytes)"
    hiod = HostIOMMUDevice.from_hw_info("0000:00:03.0", hw)
    assert repr(hiod) == (
        "HostIOMMUDevice(0000:00:03.0, iommufd, intel-vtd, capabilities=0x1 [DIRTY_TRACKING], "
        "data=32 bytes)"
    )
    fault = DmaFault(0x1000, 8, True, errno.EFAULT)
    assert repr(fault) == "DmaFault(write of 0x8 bytes at iova 0x1000: EFAULT (Bad address))"


def test_sync_result_repr_has_no_bitmap(sim: SimKernel) -> None:
    bdf = str(sim.machine.add_pci_device(dirty=True)["bdf"])
    with IOMMUFDBackend(kernel=sim) as be, AddressSpace() as space:
        block = space.add_ram(64 << 20, 0x100000)
        with VFIODevice(bdf, kernel=sim).attach(space, be), DirtyTracker(space) as t:
            r = t.sync()
            text = repr(r)
            assert text.startswith("<SyncResult ") and len(text) < 200 and "array" not in text
            d = r.for_block(block)
            assert "array" not in repr(d) and len(repr(d)) < 200
            assert d.page_ranges.shape[1] == d.byte_ranges.shape[1] == d.gpa_ranges.shape[1] == 2


def test_sim_dma_faults_are_records(sim: SimKernel) -> None:
    bdf = str(sim.machine.add_pci_device()["bdf"])
    assert sim.dma_faults(bdf) == []
