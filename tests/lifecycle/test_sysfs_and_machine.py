"""The sysfs view (real /sys or the simulated machine's) and the simulated machine's API
for plugging in PCI devices: ids, IOMMU groups, IOMMU models."""

from __future__ import annotations

import pytest

from fastmap.errors import InvalidArgumentError
from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice
from fastmap.lifecycle.sysfs import HostSysfs, SimSysfs, sysfs_for
from tests.facilities import only_on_sim
from tests.lifecycle.conftest import MOCK_RAM_GPA


def test_sysfs_view_of_a_vfio_device(kernel: Kernel, edu: str) -> None:
    sysfs = sysfs_for(kernel)
    assert isinstance(sysfs, SimSysfs if kernel.name == "sim" else HostSysfs)
    dev = f"/sys/bus/pci/devices/{edu}"
    assert sysfs.exists(dev) and not sysfs.exists(f"{dev}/no-such-attribute")
    assert sysfs.exists(f"{dev}/vendor")  # a file
    assert sysfs.pci_ids(dev) == (0x1234, 0x11E8)
    assert sysfs.driver(dev) == "vfio-pci"
    assert edu in sysfs.pci_devices()
    group = sysfs.iommu_group(dev)
    assert edu in sysfs.listdir(f"/sys/kernel/iommu_groups/{group}/devices")
    name, devt = sysfs.vfio_cdev(dev)
    fd = kernel.open_fd(f"/dev/vfio/devices/{name}")
    with fd:
        assert sysfs.devt(fd.number) == devt
    with pytest.raises(FileNotFoundError):
        sysfs.read(f"{dev}/no-such-attribute")


@only_on_sim
def test_sim_machine_devices(kernel: Kernel) -> None:
    """What the simulated machine offers from Python (see examples/README.md)."""
    machine = getattr(kernel, "machine", None)
    if machine is None:
        pytest.skip("the simulated machine")
    a = machine.add_pci_device(vendor=0x1AF4, device=0x1041, group=3, iommu="vtd", dirty=True)
    b = machine.add_pci_device(bdf="0000:00:1f.0", group=3, iommu="vtd")
    m = machine.add_pci_device(iommu="mock", dirty=False)
    assert a["bdf"] == "0000:00:03.0" and b["bdf"] == "0000:00:1f.0"
    assert a["group"] == b["group"] == 3 and m["group"] == 4
    assert [d["bdf"] for d in machine.devices()] == [a["bdf"], b["bdf"], m["bdf"]]
    sysfs = sysfs_for(kernel)
    assert sysfs.pci_ids(a["sysfs"]) == (0x1AF4, 0x1041)
    assert sorted(sysfs.listdir("/sys/kernel/iommu_groups/3/devices")) == [a["bdf"], b["bdf"]]
    assert sysfs.vfio_cdev(m["sysfs"]) == ("vfio2", (511, 2))
    with pytest.raises(OSError):  # one group, one IOMMU
        machine.add_pci_device(group=3, iommu="mock")
    with pytest.raises(OSError):  # BDF taken
        machine.add_pci_device(bdf=b["bdf"])
    with pytest.raises(InvalidArgumentError, match="iommu"):  # the core's EINVAL
        machine.add_pci_device(iommu="amd")

    # The IOMMU models show through the lifecycle's HostIOMMUDevice.
    with AddressSpace() as space, IOMMUFDBackend(kernel=kernel) as be:
        space.add_ram(1 << 20, MOCK_RAM_GPA)
        for info, kind, dirty, aw in ((a, "intel-vtd", True, 48), (m, "selftest", False, 31)):
            with VFIODevice(info["bdf"], kernel=kernel).attach(space, be) as dev:
                assert dev.hiod is not None
                assert (dev.hiod.type_name, dev.hiod.dirty_tracking) == (kind, dirty)
                assert dev.hiod.aw_bits == aw
