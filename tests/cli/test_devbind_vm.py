"""`fastmap unbind` / `fastmap bind` on the real kernel: only inside the test VM, on its
emulated edu device (the runner bound it to vfio-pci; edu has no other driver). The device
is bound back to vfio-pci whatever happens, for the tests that follow.

NEVER outside the VM: FASTMAP_VMTEST=1 (set by tools/vmtest/run.sh in the guest) is
required on top of /dev/iommu, so no host's real PCI devices are ever touched."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fastmap.host.devbind import DeviceInUseError, bind_device, driver_of, unbind_device
from fastmap.host.files import HostFiles
from tests.facilities import missing

EDU = ("0x1234", "0x11e8")


def _fastmap(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastmap.cli", *argv], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def vm_edu() -> Iterator[str]:
    if os.environ.get("FASTMAP_VMTEST") != "1":
        pytest.skip("binds and unbinds PCI devices: only inside the test VM")
    if not os.path.exists("/dev/iommu"):
        missing("iommu", "no /dev/iommu in this VM")
    files = HostFiles()
    bdfs = [
        bdf
        for bdf in files.listdir("/sys/bus/pci/devices")
        if (
            files.read(f"/sys/bus/pci/devices/{bdf}/vendor"),
            files.read(f"/sys/bus/pci/devices/{bdf}/device"),
        )
        == EDU
        and driver_of(files, bdf) == "vfio-pci"
    ]
    if not bdfs:
        missing("vfio", "no edu device bound to vfio-pci in this VM")
    try:
        yield bdfs[0]
    finally:
        bind_device(bdfs[0], files, force=True)


@pytest.mark.real_kernel
def test_edu_unbind_and_bind_in_the_vm(vm_edu: str) -> None:
    files = HostFiles()
    cdevs = files.listdir(f"/sys/bus/pci/devices/{vm_edu}/vfio-dev")
    assert cdevs, "a device bound to vfio-pci has a vfio-dev/vfioN"
    # Held open by this process: unbind refuses (the kernel's unbind would block on it).
    fd = os.open(f"/dev/vfio/devices/{cdevs[0]}", os.O_RDWR)
    try:
        with pytest.raises(DeviceInUseError, match=f"process {os.getpid()} "):
            unbind_device(vm_edu, files)
    finally:
        os.close(fd)
    run = _fastmap("unbind", vm_edu)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{vm_edu}: vfio-pci -> no driver"
    assert driver_of(files, vm_edu) is None
    assert files.read(f"/sys/bus/pci/devices/{vm_edu}/driver_override") == "(null)"
    run = _fastmap("bind", vm_edu)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{vm_edu}: no driver -> vfio-pci"
    assert files.listdir(f"/sys/bus/pci/devices/{vm_edu}/vfio-dev")
    run = _fastmap("bind", vm_edu)
    assert run.stdout.strip() == f"{vm_edu}: already bound to vfio-pci", run.stderr
