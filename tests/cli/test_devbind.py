"""`fastmap bind/unbind` against a fake sysfs tree (tests/cli/fakehost.py): the
driver_override dance, the original driver coming back, and the devices it must refuse.
Never against this machine's devices: those run only inside the VM (test_devbind_vm.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastmap.cli import main
from fastmap.errors import DeviceNotFoundError
from fastmap.host.devbind import (
    BindError,
    DeviceInUseError,
    bind_device,
    unbind_device,
)
from fastmap.pci_address import normalize_bdf
from tests.cli.fakehost import FakeHost

BDF = "0000:03:00.0"


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    h = FakeHost(tmp_path)
    h.add_driver("vfio-pci")
    return h


def test_bind_then_unbind_restores_the_original_driver(host: FakeHost) -> None:
    host.add_device(BDF, "ixgbe", klass=0x020000)
    result = bind_device(BDF, host.files)
    assert (result.before, result.after) == ("ixgbe", "vfio-pci")
    assert host.writes[:3] == [
        ("/run/fastmap/devbind/" + BDF, "ixgbe"),
        (f"/sys/bus/pci/devices/{BDF}/driver/unbind", BDF),
        (f"/sys/bus/pci/devices/{BDF}/driver_override", "vfio-pci"),
    ]
    assert host.writes[3] == ("/sys/bus/pci/drivers_probe", BDF)
    # A second bind changes nothing.
    assert not bind_device(BDF, host.files).changed
    # Unbind: the native driver comes back and driver_override is cleared.
    back = unbind_device(BDF, host.files)
    assert (back.before, back.after) == ("vfio-pci", "ixgbe")
    assert host.driver(BDF) == "ixgbe"
    assert (host.root / f"sys/bus/pci/devices/{BDF}/driver_override").read_text() == "(null)\n"
    assert not (host.root / "run/fastmap/devbind" / BDF).exists()


def test_unbind_binds_the_recorded_driver_when_probing_picks_another(host: FakeHost) -> None:
    host.add_device(BDF, "nvme", klass=0x010802)
    bind_device(BDF, host.files)
    host.native[BDF] = None  # the probe finds no driver: bind the recorded one explicitly
    host.add_driver("nvme")
    assert unbind_device(BDF, host.files).after == "nvme"
    assert ("/sys/bus/pci/drivers/nvme/bind", BDF) in host.writes


def test_device_without_a_driver_goes_back_to_none(host: FakeHost) -> None:
    host.add_device(BDF, None)
    assert bind_device(BDF, host.files).describe() == f"{BDF}: no driver -> vfio-pci"
    assert unbind_device(BDF, host.files).after is None


def test_unbind_to_a_named_driver(host: FakeHost) -> None:
    host.add_device(BDF, "vfio-pci")
    host.add_driver("e1000e")
    assert unbind_device(BDF, host.files, driver="e1000e").after == "e1000e"


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (
            lambda h: (
                h.write(f"sys/bus/pci/devices/{BDF}/net/eth0/flags", "0x1003"),
                h.write("sys/class/net/eth0/flags", "0x1003"),
            ),
            "eth0 is up",
        ),
        (
            lambda h: (
                h.write(f"sys/bus/pci/devices/{BDF}/net/eth0/flags", "0x1002"),
                h.write("proc/net/route", "Iface\tDestination\neth0\t00000000\n"),
            ),
            "routing table uses its interface eth0",
        ),
        (
            lambda h: (
                h.write(f"sys/bus/pci/devices/{BDF}/nvme/nvme0/nvme0n1/nvme0n1p2/size", "8"),
                h.write("proc/mounts", "/dev/nvme0n1p2 /home ext4 rw 0 0\n"),
            ),
            "/dev/nvme0n1p2 is mounted on /home",
        ),
        (
            lambda h: (
                h.write(f"sys/bus/pci/devices/{BDF}/host0/block/sda/size", "8"),
                h.write("proc/swaps", "Filename Type\n/dev/sda partition 1 0 -2\n"),
            ),
            "/dev/sda is a swap device",
        ),
        (lambda h: h.write(f"sys/bus/pci/devices/{BDF}/class", "0x060400"), "PCI bridge"),
    ],
    ids=["net-up", "routing", "mounted", "swap", "bridge"],
)
def test_devices_in_use_are_refused_unless_forced(host: FakeHost, setup, reason: str) -> None:  # type: ignore[no-untyped-def]
    host.add_device(BDF, "somedrv")
    setup(host)
    with pytest.raises(DeviceInUseError, match=reason):
        bind_device(BDF, host.files)
    assert host.driver(BDF) == "somedrv" and host.writes == []
    assert bind_device(BDF, host.files, force=True).after == "vfio-pci"


def test_unbind_refuses_a_device_a_process_has_open(host: FakeHost) -> None:
    host.add_device(BDF, "vfio-pci")
    host.write("proc/4242/comm", "qemu-system-x86")
    host.link("proc/4242/fd/7", "/dev/vfio/devices/vfio0")
    with pytest.raises(DeviceInUseError, match=r"process 4242 \(qemu-system-x86\)"):
        unbind_device(BDF, host.files)
    assert host.driver(BDF) == "vfio-pci"
    assert unbind_device(BDF, host.files, force=True).after is None


def test_refusals(host: FakeHost) -> None:
    with pytest.raises(DeviceNotFoundError, match="no PCI device"):
        bind_device(BDF, host.files)
    host.add_device(BDF, "drv", group=None)
    with pytest.raises(BindError, match="no IOMMU group"):
        bind_device(BDF, host.files)
    with pytest.raises(BindError, match="not bound to vfio-pci"):
        unbind_device(BDF, host.files)
    (host.root / "sys/bus/pci/drivers/vfio-pci").rmdir()
    with pytest.raises(BindError, match="modprobe vfio-pci"):
        bind_device(BDF, host.files)
    assert host.driver(BDF) == "drv"


def test_bdf_forms() -> None:
    assert normalize_bdf("03:00.0") == "0000:03:00.0"
    assert normalize_bdf("0000:AF:1f.7") == "0000:af:1f.7"
    for bad in ("3:0.0", "0000:03:00", "0000:03:00.8", "eth0"):
        with pytest.raises(ValueError, match="not a PCI address"):
            normalize_bdf(bad)


def test_cli_bind_and_errors(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(host.root)
    host.add_device(BDF, "drv")
    host.write("sys/bus/pci/drivers/drv/unbind", "")
    # The CLI's binder writes plain files (no kernel behind the fake tree): the driver link
    # does not move, so bind reports that vfio-pci did not take the device, in one line.
    assert main(["bind", "--root", root, "03:00.0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastmap bind: BindError: 0000:03:00.0: vfio-pci did not take")
    assert "Traceback" not in err and err.count("\n") == 1
    assert main(["unbind", "--root", root, "nonsense"]) == 1
    assert "not a PCI address" in capsys.readouterr().err
