"""The simulated machine: adding PCI devices, IOMMU groups, device nodes and the sysfs view
that device discovery reads on a host."""

from __future__ import annotations

import errno
import os
import posixpath

import pytest
from tests.conformance.raw import sim_kernel as kernel

from fastmap.errors import InvalidArgumentError


def test_new_kernel_has_no_devices() -> None:
    k = kernel()
    m = k.machine
    assert m.devices() == []
    assert m.list_dir("/sys/bus/pci/devices") == []
    assert m.list_dir("/sys/kernel/iommu_groups") == []
    assert k.open("/dev/vfio/vfio", os.O_RDWR) == -errno.ENOENT
    assert k.open("/dev/vfio/devices/vfio0", os.O_RDWR) == -errno.ENOENT


def test_add_devices_auto_and_explicit() -> None:
    m = kernel().machine
    a = m.add_pci_device()
    b = m.add_pci_device(bdf="0000:00:1F.7", vendor=0x1B36, device=0x0010)
    c = m.add_pci_device(group=a["group"])
    assert a == {
        "bdf": "0000:00:03.0",
        "index": 0,
        "cdev": "/dev/vfio/devices/vfio0",
        "group": 0,
        "group_path": "/dev/vfio/0",
        "sysfs": "/sys/bus/pci/devices/0000:00:03.0",
    }
    assert (b["bdf"], b["index"], b["group"]) == ("0000:00:1f.7", 1, 1)
    assert (c["bdf"], c["index"], c["group"]) == ("0000:00:04.0", 2, 0)
    assert [d["bdf"] for d in m.devices()] == [a["bdf"], b["bdf"], c["bdf"]]
    assert m.add_pci_device(group=40)["group"] == 40
    assert m.add_pci_device()["group"] == 41


@pytest.mark.parametrize(
    "bdf",
    [
        "0000:00:03",
        "0:03.0",
        "0000:00:20.0",
        "0000:00:03.8",
        "000g:00:03.0",
        "0000-00:03.0",
        "00:03.8",
        "0:003.0",
    ],
)
def test_malformed_bdf(bdf: str) -> None:
    with pytest.raises(OSError) as e:
        kernel().machine.add_pci_device(bdf=bdf)
    assert e.value.errno == errno.EINVAL


def test_add_device_errors() -> None:
    m = kernel().machine
    a = m.add_pci_device()
    with pytest.raises(FileExistsError):
        m.add_pci_device(bdf=a["bdf"])
    with pytest.raises(OSError) as e:
        m.add_pci_device(group=a["group"], iommu="mock")  # one group, one IOMMU
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        m.add_pci_device(kind="nvme")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(InvalidArgumentError):
        m.add_pci_device(iommu="amd")
    with pytest.raises(OSError) as e:
        m.dma_faults("0000:00:09.0")
    assert e.value.errno == errno.ENODEV


def test_sysfs_view_of_a_device() -> None:
    m = kernel().machine
    d = m.add_pci_device(group=7)
    dev = d["sysfs"]
    assert m.read_link(dev) == "../../../devices/pci0000:00/0000:00:03.0"
    assert sorted(m.list_dir(dev)) == [
        "class",
        "device",
        "driver",
        "iommu_group",
        "subsystem",
        "subsystem_device",
        "subsystem_vendor",
        "vendor",
        "vfio-dev",
    ]
    assert m.read_file(dev + "/vendor") == "0x1234\n"
    assert m.read_file(dev + "/device") == "0x11e8\n"
    assert m.read_file(dev + "/class") == "0x00ff00\n"
    assert m.read_link(dev + "/iommu_group") == "../../../kernel/iommu_groups/7"
    assert m.list_dir(dev + "/iommu_group/devices") == ["0000:00:03.0"]
    assert posixpath.basename(m.read_link(dev + "/driver")) == "vfio-pci"
    assert m.read_link(dev + "/subsystem") == "../../../bus/pci"
    assert m.list_dir(dev + "/vfio-dev") == ["vfio0"]
    assert m.read_file(dev + "/vfio-dev/vfio0/dev") == "511:0\n"
    assert m.list_dir("/sys/kernel/iommu_groups/7/devices") == ["0000:00:03.0"]
    assert m.read_file("/sys/kernel/iommu_groups/7/devices/0000:00:03.0/vendor") == "0x1234\n"
    assert m.list_dir("/sys/bus/pci/drivers/vfio-pci") == ["0000:00:03.0"]
    assert m.list_dir("/sys/class/iommu") == ["dmar0"]


def test_sysfs_errors() -> None:
    m = kernel().machine
    d = m.add_pci_device()
    with pytest.raises(FileNotFoundError):
        m.read_file(d["sysfs"] + "/nope")
    with pytest.raises(IsADirectoryError):
        m.read_file(d["sysfs"])
    with pytest.raises(NotADirectoryError):
        m.list_dir(d["sysfs"] + "/vendor")
    with pytest.raises(OSError) as e:
        m.read_link(d["sysfs"] + "/vendor")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(FileNotFoundError):
        m.list_dir("relative/path")


def test_mock_iommu_devices_have_no_dmar() -> None:
    m = kernel().machine
    m.add_pci_device(iommu="mock")
    assert m.list_dir("/sys/class/iommu") == []


def test_discovery_like_a_host() -> None:
    """Find the edu device and its nodes the way QEMU and the vmtest walk do on a host."""
    k = kernel()
    m = k.machine
    m.add_pci_device(vendor=0x8086, device=0x10D3)
    want = m.add_pci_device(group=5)
    found = []
    for bdf in sorted(m.list_dir("/sys/bus/pci/devices")):
        base = "/sys/bus/pci/devices/" + bdf
        ids = (m.read_file(base + "/vendor").strip(), m.read_file(base + "/device").strip())
        if ids != ("0x1234", "0x11e8"):
            continue
        group = int(posixpath.basename(m.read_link(base + "/iommu_group")))
        (cdev,) = m.list_dir(base + "/vfio-dev")
        found.append((bdf, group, "/dev/vfio/devices/" + cdev))
    assert found == [(want["bdf"], 5, want["cdev"])]
    for path in (want["cdev"], "/dev/vfio/5", "/dev/vfio/vfio"):
        fd = k.open(path, os.O_RDWR)
        assert fd >= 0
        assert k.close(fd) == 0
    fd = k.open(want["cdev"], os.O_RDONLY)  # any access mode opens (access modes:
    assert fd >= 0  # tests/conformance/test_raw_access_mode.py)
    assert k.close(fd) == 0
