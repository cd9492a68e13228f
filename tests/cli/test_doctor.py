"""`fastmap doctor`: a fake host tree for each situation (what it finds, the fix it gives,
the exit code), the simulated machine, and, inside the VM, the real Linux 6.12 host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastmap.cli import main
from fastmap.host.doctor import diagnose_host
from fastmap.host.simdoctor import describe_sim
from fastmap.sim import SimKernel
from tests.cli.fakehost import FakeHost
from tests.facilities import missing

BDF = "0000:00:03.0"


def _texts(report) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(f"{f.status} {f.text} | {f.fix}" for f in report.findings)


def test_kernel_without_iommufd_is_unusable_and_says_why(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.config(IOMMU_SUPPORT="y")
    host.write("proc/cpuinfo", "flags\t\t: fpu hypervisor\n")
    report = diagnose_host(host.files)
    text = _texts(report)
    assert not report.usable and report.exit_code == 1
    assert "fail no /dev/iommu: this kernel is built without CONFIG_IOMMUFD" in text
    assert "warn no IOMMU" in text and "virtio-iommu-pci" in text
    assert "a virtual machine without a vIOMMU" in report.verdict
    assert "--kernel sim doctor" in report.verdict


def test_module_not_loaded_gives_modprobe(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.config(IOMMUFD="m", VFIO="m", VFIO_PCI="m")
    text = _texts(diagnose_host(host.files))
    assert "fail no /dev/iommu: the iommufd module is not loaded | sudo modprobe iommufd" in text
    assert "warn the vfio-pci driver is not loaded | sudo modprobe vfio-pci" in text


def test_usable_host_with_a_bound_device(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.config(IOMMUFD="y", VFIO="y", VFIO_PCI="y", VFIO_DEVICE_CDEV="y")
    host.add_iommu_units()
    host.add_driver("vfio-pci")
    host.add_device(BDF, "vfio-pci", group=3)
    host.add_device("0000:00:03.1", "snd_hda_intel", group=3)
    host.write("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "64")
    host.write("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "60")
    report = diagnose_host(host.files)
    text = _texts(report)
    assert report.usable, text
    assert "ok /dev/iommu opens read-write" in text
    assert "ok dmar0: intel-vtd, 0 device(s); dirty tracking yes, nesting yes, PASID no" in text
    assert (
        f"ok {BDF} [1234:11e8] bound to vfio-pci, group 3, IOMMU dmar0, cdev "
        "/dev/vfio/devices/vfio0" in text
    )
    assert "group 3 also holds 0000:00:03.1 (driver snd_hda_intel)" in text
    assert "sudo fastmap bind 0000:00:03.1" in text
    assert "warn RLIMIT_MEMLOCK 8 MiB" in text and "memlock unlimited" in text
    assert "ok 2 MiB huge pages: 64 reserved, 60 free" in text
    host.write("proc/77/comm", "qemu-system-x86")
    host.link("proc/77/fd/12", "/dev/vfio/3")
    assert f"info {BDF} is in use by 77 (qemu-system-x86)" in _texts(diagnose_host(host.files))


def test_unreadable_dev_iommu_gives_the_udev_rule(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root opens any file: permissions cannot be tested")
    host = FakeHost(tmp_path)
    host.add_iommu_units()
    (tmp_path / "dev/iommu").chmod(0o400)
    text = _texts(diagnose_host(host.files))
    assert "may not open it read-write" in text and "90-fastmap.rules" in text


def test_cli_exit_code_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = FakeHost(tmp_path)
    assert main(["doctor", "--root", str(tmp_path), "--kernel", "real", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["usable"] is False and doc["findings"][0]["section"] == "Kernel"
    host.add_iommu_units()
    assert main(["--kernel", "real", "doctor", "--root", str(tmp_path)]) == 0
    assert "Usable: fastmap drives this kernel's IOMMUFD" in capsys.readouterr().out


def test_simulated_machine_is_described_with_hw_info() -> None:
    kernel = SimKernel()
    kernel.machine.add_pci_device(bdf=BDF, iommu="vtd")
    kernel.machine.add_pci_device(bdf="0000:00:04.0", iommu="mock", dirty=True)
    report = describe_sim(kernel)
    text = _texts(report)
    assert report.usable
    assert (
        f"ok {BDF} [1234:11e8] bound to vfio-pci, group 0 (/dev/vfio/0), cdev "
        "/dev/vfio/devices/vfio0" in text
    )
    assert f"ok {BDF} IOMMU_GET_HW_INFO: type intel-vtd, dirty tracking no" in text
    assert "ok 0000:00:04.0 IOMMU_GET_HW_INFO: type selftest, dirty tracking yes" in text


def test_this_host_explains_itself() -> None:
    """Where there is no /dev/iommu (this development machine), the real doctor runs,
    explains why and exits 1, with no traceback."""
    if os.path.exists("/dev/iommu"):
        pytest.skip("this machine has /dev/iommu")
    run = subprocess.run(
        [sys.executable, "-m", "fastmap.cli", "doctor"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1, run.stderr
    assert "FAIL no /dev/iommu" in run.stdout and "Not usable with the real kernel" in run.stdout
    assert "Traceback" not in run.stderr


@pytest.mark.real_kernel
def test_doctor_passes_in_the_vm_with_vfio_edu() -> None:
    """Inside the VM (virtio-iommu or VT-d, edu bound to vfio-pci by the runner): usable,
    the IOMMU named with its type, the edu device listed with its GET_HW_INFO answer."""
    if not os.path.exists("/dev/iommu"):
        missing("iommu", "no /dev/iommu here (run inside the VM: tools/vmtest/run.sh)")
    run = subprocess.run(
        [sys.executable, "-m", "fastmap.cli", "doctor"], capture_output=True, text=True, timeout=120
    )
    print(run.stdout)
    if "bound to vfio-pci" not in run.stdout:
        missing("vfio", "no device bound to vfio-pci")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok   /dev/iommu opens read-write" in run.stdout
    iommu = os.environ.get("FASTMAP_VMTEST_IOMMU", "")
    kind = {"virtio": "virtio-iommu", "vtd": "intel-vtd"}.get(iommu)
    if kind is not None:
        assert f": {kind}, " in run.stdout, run.stdout
    hw = {"virtio": "type none, dirty tracking no", "vtd": "type intel-vtd"}.get(iommu)
    assert "IOMMU_GET_HW_INFO: " + (hw or "type") in run.stdout, run.stdout


def test_iommu_units_are_named_by_their_driver(tmp_path: Path) -> None:
    """virtio-iommu names its unit after its PCI address (as in the VM), the selftest's mock
    IOMMU after itself; AMD's features register gives its capabilities."""
    from fastmap.host.iommu import read_units

    host = FakeHost(tmp_path)
    host.link("sys/class/iommu/0000:00:01.0/device", "../../../devices/virtio0")
    host.link("sys/devices/virtio0/driver", "../../bus/virtio/drivers/virtio_iommu")
    (tmp_path / "sys/class/iommu/iommufd_selftest_iommu.0").mkdir()
    efr = (1 << 52) | (1 << 4) | (0x0F << 32)
    host.write("sys/class/iommu/ivhd0/amd-iommu/features", f"{efr:x}:0\n")
    units = {u.name: u for u in read_units(host.files)}
    assert units["0000:00:01.0"].type == "virtio-iommu"
    assert units["iommufd_selftest_iommu.0"].type == "iommufd-selftest (mock)"
    amd = units["ivhd0"]
    assert (amd.type, amd.dirty_tracking, amd.nesting, amd.pasid) == ("amd-vi", True, True, True)
