"""Finding a VFIO device cdev to test with, on the real kernel and on the simulator.

Real kernel: a PCI device bound to vfio-pci shows up as /sys/bus/pci/devices/<bdf>/vfio-dev/
vfioN, with the node /dev/vfio/devices/vfioN. The VM tooling binds QEMU's edu device
(1234:11e8) to vfio-pci; if nothing is bound yet we bind edu ourselves through sysfs
driver_override + drivers_probe (root only).
"""

from __future__ import annotations

import glob
import os

EDU_VENDOR, EDU_DEVICE = "0x1234", "0x11e8"
PCI_DEVICES = "/sys/bus/pci/devices"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def find_edu() -> str | None:
    """The BDF of the first edu device, or None."""
    for dev in sorted(glob.glob(f"{PCI_DEVICES}/*")):
        try:
            if (_read(f"{dev}/vendor"), _read(f"{dev}/device")) == (EDU_VENDOR, EDU_DEVICE):
                return os.path.basename(dev)
        except OSError:
            continue
    return None


def bind_vfio_pci(bdf: str) -> None:
    """Rebind `bdf` to vfio-pci (what tools/vmtest/guest-setup.sh does)."""
    dev = f"{PCI_DEVICES}/{bdf}"
    driver = f"{dev}/driver"
    if os.path.exists(driver):
        if os.path.basename(os.readlink(driver)) == "vfio-pci":
            return
        with open(f"{driver}/unbind", "w") as f:
            f.write(bdf)
    with open(f"{dev}/driver_override", "w") as f:
        f.write("vfio-pci")
    with open("/sys/bus/pci/drivers_probe", "w") as f:
        f.write(bdf)


def vfio_cdevs() -> list[str]:
    """/dev/vfio/devices/vfioN paths of the devices bound to vfio-pci, edu first."""
    found = []
    for node in sorted(glob.glob(f"{PCI_DEVICES}/*/vfio-dev/vfio*")):
        bdf = node.split("/")[-3]
        is_edu = (_read(f"{PCI_DEVICES}/{bdf}/vendor"), _read(f"{PCI_DEVICES}/{bdf}/device")) == (
            EDU_VENDOR,
            EDU_DEVICE,
        )
        found.append((not is_edu, f"/dev/vfio/devices/{os.path.basename(node)}"))
    return [path for _, path in sorted(found)]


def real_vfio_cdev() -> tuple[str | None, str]:
    """(cdev path, reason) for the real kernel; path is None when there is no device."""
    cdevs = vfio_cdevs()
    if cdevs:
        return cdevs[0], ""
    bdf = find_edu()
    if bdf is None:
        return None, "no device bound to vfio-pci and no edu device to bind"
    if os.geteuid() != 0:
        return None, f"edu {bdf} is not bound to vfio-pci and binding needs root"
    try:
        bind_vfio_pci(bdf)
    except OSError as e:
        return None, f"binding edu {bdf} to vfio-pci failed: {e}"
    cdevs = vfio_cdevs()
    return (cdevs[0], "") if cdevs else (None, f"edu {bdf} bound but has no vfio-dev node")
