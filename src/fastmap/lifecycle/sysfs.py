"""The host's view of its devices (sysfs, and which char device an fd is), for either kernel.

The device lifecycle reads sysfs to find a device's VFIO cdev (`vfio-dev/vfioN/dev`) and its
IOMMU group (`iommu_group`), and checks that an opened cdev is the char device sysfs named
(fstat's st_rdev, as QEMU's open_cdev does). `Sysfs` is the one place that does this:

    sysfs = sysfs_for(kernel)        # /sys on the real kernel, the simulated Machine's view
    for bdf in sysfs.find_pci(0x1234, 0x11E8): ...

On the real kernel it reads /sys and fstat()s the fd; on the simulated kernel it reads the
Machine's sysfs tree (csrc/sim/vfio/machine.h lists what it holds) and asks the simulator
for the file's st_rdev. Both raise the same OSError subclasses (FileNotFoundError, ...), so
the code above them is the same on both kernels.
"""

from __future__ import annotations

import os
import posixpath
import stat
from abc import ABC, abstractmethod

from fastmap import _core
from fastmap.kernel import Kernel

PCI_DEVICES = "/sys/bus/pci/devices"


class Sysfs(ABC):
    """Read-only access to sysfs, and the identity of an open char device."""

    @abstractmethod
    def read(self, path: str) -> str:
        """The content of a sysfs attribute, trailing newline stripped."""

    @abstractmethod
    def readlink(self, path: str) -> str:
        """The target of a symlink, as written (usually relative)."""

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """The names in a directory (symlinks to directories are followed)."""

    @abstractmethod
    def devt(self, fd: int) -> tuple[int, int] | None:
        """(major, minor) of the char device `fd` is open on (fstat st_rdev); None when the
        fd is not a char device. OSError(EBADF) for a closed fd."""

    # --- what the lifecycle asks ---------------------------------------------------------
    def exists(self, path: str) -> bool:
        try:
            self.listdir(path)
        except NotADirectoryError:
            return True  # a file
        except OSError:
            return False
        return True

    def missing_device(self, sysfsdev: str) -> str | None:
        """Why `sysfsdev` cannot be a device here: None when it exists, else a message that
        names the PCI devices there are (so a typo is not mistaken for an unbound device)."""
        if self.exists(sysfsdev):
            return None
        there = ", ".join(self.pci_devices()) or "none"
        return f"no such PCI device: {sysfsdev} does not exist (PCI devices here: {there})"

    def pci_devices(self) -> list[str]:
        """BDFs of every PCI device, sorted."""
        try:
            return sorted(self.listdir(PCI_DEVICES))
        except FileNotFoundError:
            return []

    def pci_ids(self, sysfsdev: str) -> tuple[int, int]:
        """(vendor, device) of the PCI device at `sysfsdev`."""
        return int(self.read(f"{sysfsdev}/vendor"), 16), int(self.read(f"{sysfsdev}/device"), 16)

    def find_pci(self, vendor: int, device: int) -> list[str]:
        """BDFs of the PCI devices with these ids, sorted."""
        found = []
        for bdf in self.pci_devices():
            try:
                if self.pci_ids(f"{PCI_DEVICES}/{bdf}") == (vendor, device):
                    found.append(bdf)
            except (OSError, ValueError):
                continue
        return found

    def driver(self, sysfsdev: str) -> str | None:
        """The name of the driver bound to the device, or None."""
        try:
            return posixpath.basename(self.readlink(f"{sysfsdev}/driver"))
        except OSError:
            return None

    def iommu_group(self, sysfsdev: str) -> int:
        """The device's IOMMU group number (the `iommu_group` link's last component)."""
        target = self.readlink(f"{sysfsdev}/iommu_group")
        name = posixpath.basename(target)
        try:
            return int(name)
        except ValueError:
            raise ValueError(f"{sysfsdev}/iommu_group points to {target!r}, not a group") from None

    def vfio_cdev(self, sysfsdev: str) -> tuple[str, tuple[int, int]]:
        """The device's VFIO cdev: ('vfioN', (major, minor)) from `vfio-dev/vfioN/dev`.

        FileNotFoundError when the device has no vfio-dev directory (not bound to vfio-pci,
        or a kernel without CONFIG_VFIO_DEVICE_CDEV).
        """
        names = [n for n in self.listdir(f"{sysfsdev}/vfio-dev") if n.startswith("vfio")]
        if not names:
            raise FileNotFoundError(2, "no vfio-dev/vfioN entry", f"{sysfsdev}/vfio-dev")
        name = sorted(names)[0]
        text = self.read(f"{sysfsdev}/vfio-dev/{name}/dev")
        try:
            major, minor = (int(x) for x in text.split(":"))
        except ValueError:
            raise ValueError(
                f"{sysfsdev}/vfio-dev/{name}/dev is {text!r}, not major:minor"
            ) from None
        return name, (major, minor)


class HostSysfs(Sysfs):
    """The running kernel's /sys (`root` may point elsewhere, e.g. a copied tree)."""

    def __init__(self, root: str = "/") -> None:
        self._root = root

    def _path(self, path: str) -> str:
        return os.path.join(self._root, path.lstrip("/")) if self._root != "/" else path

    def read(self, path: str) -> str:
        with open(self._path(path)) as f:
            return f.read().strip()

    def readlink(self, path: str) -> str:
        return os.readlink(self._path(path))

    def listdir(self, path: str) -> list[str]:
        return os.listdir(self._path(path))

    def devt(self, fd: int) -> tuple[int, int] | None:
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode):
            return None
        return os.major(st.st_rdev), os.minor(st.st_rdev)


class SimSysfs(Sysfs):
    """The simulated machine's sysfs view (what `SimKernel.machine` has published)."""

    def __init__(self, sim: _core.SimKernel) -> None:
        self._sim = sim

    def read(self, path: str) -> str:
        return self._sim.machine.read_file(path).strip()

    def readlink(self, path: str) -> str:
        return self._sim.machine.read_link(path)

    def listdir(self, path: str) -> list[str]:
        return self._sim.machine.list_dir(path)

    def devt(self, fd: int) -> tuple[int, int] | None:
        return self._sim.chardev_of(fd)


def sysfs_for(kernel: Kernel) -> Sysfs:
    """The sysfs that goes with `kernel`: the simulator's for a simulated kernel, else /sys."""
    core: _core.Kernel = kernel.core
    # A fault-injecting kernel (_core.FaultKernel) has the sysfs of the kernel it wraps.
    while isinstance(core, _core.FaultKernel):
        core = core.inner
    sim_type = getattr(_core, "SimKernel", None)
    if sim_type is not None and isinstance(core, sim_type):
        return SimSysfs(core)
    return HostSysfs()
