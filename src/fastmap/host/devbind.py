"""`fastmap bind/unbind BDF`: hand a PCI device to vfio-pci and back, as dpdk-devbind does.

bind:   unbind the device from its driver, write "vfio-pci" to its driver_override, and ask
        the PCI core to probe it again (drivers_probe); the original driver's name is kept in
        /run/fastmap/devbind/BDF.
unbind: unbind it from vfio-pci, clear driver_override, probe again (the native driver takes
        it back); if that is not the recorded driver, bind it to that one explicitly.

A device the host is using is refused unless `force`: a network interface that is up or in
the routing table (dpdk-devbind's check), a block device that is mounted, used as swap or
held by device-mapper/md, a PCI bridge (everything behind it would go), the boot display;
for unbind, a VFIO device some process has open (the kernel's unbind would wait for it).

All paths go through `HostFiles`, so tests point it at a fake sysfs tree. NEVER run this
against a machine whose devices you do not mean to hand over.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

from fastmap.errors import DeviceNotFoundError, VFIOError
from fastmap.host.files import HostFiles
from fastmap.pci_address import normalize_bdf

PCI_DEVICES = "/sys/bus/pci/devices"
PCI_DRIVERS = "/sys/bus/pci/drivers"
VFIO_PCI = "vfio-pci"
STATE_DIR = "/run/fastmap/devbind"
_IFF_UP = 0x1
_CLASS_BRIDGE_PCI = 0x0604
_CLASS_DISPLAY = 0x03


class DeviceInUseError(VFIOError, RuntimeError):
    """The host is using the device (`reasons`); bind/unbind refused. `--force` overrides."""

    def __init__(self, bdf: str, reasons: list[str]) -> None:
        self.bdf = bdf
        self.reasons = reasons
        super().__init__(f"{bdf} is in use: {'; '.join(reasons)} (--force to do it anyway)")


class BindError(VFIOError, RuntimeError):
    """The kernel did not bind the device as asked."""


@dataclass(frozen=True)
class BindResult:
    bdf: str
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def describe(self) -> str:
        if not self.changed:
            return f"{self.bdf}: already bound to {self.after or 'no driver'}"
        return f"{self.bdf}: {self.before or 'no driver'} -> {self.after or 'no driver'}"


def _device(files: HostFiles, bdf: str) -> str:
    dev = f"{PCI_DEVICES}/{bdf}"
    if not files.exists(dev):
        raise DeviceNotFoundError(f"no PCI device {bdf} (lspci -D lists them)")
    return dev


def driver_of(files: HostFiles, bdf: str) -> str | None:
    return files.readlink_name(f"{PCI_DEVICES}/{bdf}/driver")


def _block_devices(files: HostFiles, dev: str) -> list[str]:
    """Block devices below the PCI device in sysfs (disks and their partitions; NVMe
    namespaces live under nvme/nvmeN/)."""
    found: list[str] = []
    root = files.path(dev)
    for path, dirs, _ in os.walk(root):
        depth = path[len(root) :].count(os.sep)
        if depth >= 6:
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(path, d))]
        if os.path.basename(path) == "block":
            for disk in sorted(dirs):
                found.append(disk)
                found.extend(p for p in files.listdir(f"/sys/block/{disk}") if p.startswith(disk))
            dirs[:] = []
        elif re.fullmatch(r"nvme\d+n\d+", os.path.basename(path)):
            disk = os.path.basename(path)
            found.append(disk)
            found.extend(p for p in sorted(dirs) if p.startswith(disk))
            dirs[:] = []
    return found


def in_use_reasons(files: HostFiles, bdf: str) -> list[str]:
    """Why handing `bdf` to vfio-pci would take something away from the host ([] if not)."""
    dev = _device(files, bdf)
    reasons = []
    routes = (files.read("/proc/net/route") or "").splitlines()[1:]
    for iface in files.listdir(f"{dev}/net"):
        flags = files.read(f"/sys/class/net/{iface}/flags") or files.read(
            f"{dev}/net/{iface}/flags"
        )
        if any(line.split()[:1] == [iface] for line in routes):
            reasons.append(f"the routing table uses its interface {iface}")
        elif flags is not None and int(flags, 16) & _IFF_UP:
            reasons.append(f"its network interface {iface} is up (ip link set {iface} down)")
    blocks = _block_devices(files, dev)
    if blocks:
        mounts = files.read("/proc/mounts") or ""
        swaps = files.read("/proc/swaps") or ""
        for name in blocks:
            node = f"/dev/{name}"
            for line in mounts.splitlines():
                fields = line.split()
                if fields and fields[0] == node:
                    reasons.append(f"{node} is mounted on {fields[1]}")
            if any(line.split()[:1] == [node] for line in swaps.splitlines()):
                reasons.append(f"{node} is a swap device")
            if files.listdir(f"/sys/block/{name}/holders") or files.listdir(
                f"/sys/class/block/{name}/holders"
            ):
                reasons.append(f"{node} is held by device-mapper/md")
    klass = files.read(f"{dev}/class")
    if klass is not None:
        value = int(klass, 16)
        if value >> 8 == _CLASS_BRIDGE_PCI:
            reasons.append("it is a PCI bridge: every device behind it would go too")
        if value >> 16 == _CLASS_DISPLAY and files.read(f"{dev}/boot_vga") == "1":
            reasons.append("it is the boot display")
    return reasons


def vfio_users(files: HostFiles, bdf: str) -> list[str]:
    """'PID (comm)' of the processes holding the device's VFIO cdev or group open."""
    dev = f"{PCI_DEVICES}/{bdf}"
    nodes = {
        f"/dev/vfio/devices/{n}" for n in files.listdir(f"{dev}/vfio-dev") if n.startswith("vfio")
    }
    group = files.readlink_name(f"{dev}/iommu_group")
    if group:
        nodes.add(f"/dev/vfio/{group}")
    users = []
    for pid in files.listdir("/proc"):
        if not pid.isdigit():
            continue
        for fd in files.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(files.path(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if target in nodes:
                users.append(f"{pid} ({files.read(f'/proc/{pid}/comm') or '?'})")
                break
    return users


def _state_path(bdf: str) -> str:
    return f"{STATE_DIR}/{bdf}"


def _probe(files: HostFiles, bdf: str) -> None:
    # drivers_probe fails (EINVAL or ENODEV) when no driver takes the device; the result is
    # read back from the driver link either way.
    with contextlib.suppress(OSError):
        files.write("/sys/bus/pci/drivers_probe", bdf)


def bind_device(bdf: str, files: HostFiles | None = None, *, force: bool = False) -> BindResult:
    """Bind `bdf` to vfio-pci (see the module docstring)."""
    files = files or HostFiles()
    bdf = normalize_bdf(bdf)
    dev = _device(files, bdf)
    before = driver_of(files, bdf)
    if before == VFIO_PCI:
        return BindResult(bdf, before, before)
    if not force:
        reasons = in_use_reasons(files, bdf)
        if reasons:
            raise DeviceInUseError(bdf, reasons)
    if not files.is_dir(f"{PCI_DRIVERS}/{VFIO_PCI}"):
        raise BindError("the vfio-pci driver is not loaded. Fix: sudo modprobe vfio-pci")
    if not files.exists(f"{dev}/iommu_group"):
        raise BindError(
            f"{bdf} has no IOMMU group, so vfio-pci would refuse it: enable the IOMMU "
            "(`fastmap doctor` says how)"
        )
    state = _state_path(bdf)
    if not files.exists(state):
        os.makedirs(files.path(STATE_DIR), exist_ok=True)
        files.write(state, before or "")
    if before is not None:
        files.write(f"{dev}/driver/unbind", bdf)
    files.write(f"{dev}/driver_override", VFIO_PCI)
    _probe(files, bdf)
    after = driver_of(files, bdf)
    if after != VFIO_PCI:
        _restore(files, bdf, dev, before)
        raise BindError(
            f"{bdf}: vfio-pci did not take the device (now: "
            f"{driver_of(files, bdf) or 'no driver'}); dmesg says why"
        )
    return BindResult(bdf, before, after)


def _restore(files: HostFiles, bdf: str, dev: str, driver: str | None) -> None:
    files.write(f"{dev}/driver_override", "\n")
    if driver_of(files, bdf) is None:
        _probe(files, bdf)
    if driver and driver_of(files, bdf) != driver and files.is_dir(f"{PCI_DRIVERS}/{driver}"):
        with contextlib.suppress(OSError):
            files.write(f"{PCI_DRIVERS}/{driver}/bind", bdf)


def unbind_device(
    bdf: str, files: HostFiles | None = None, *, driver: str | None = None, force: bool = False
) -> BindResult:
    """Give `bdf` back from vfio-pci: to `driver`, else the driver it had before `bind`,
    else whichever driver the kernel picks (none, for a device without one)."""
    files = files or HostFiles()
    bdf = normalize_bdf(bdf)
    dev = _device(files, bdf)
    before = driver_of(files, bdf)
    if before != VFIO_PCI:
        raise BindError(f"{bdf} is not bound to vfio-pci (driver: {before or 'none'})")
    if not force:
        users = vfio_users(files, bdf)
        if users:
            raise DeviceInUseError(bdf, [f"process {u} has its VFIO device open" for u in users])
    state = _state_path(bdf)
    recorded = files.read(state)
    target = driver if driver is not None else (recorded or None)
    files.write(f"{dev}/driver/unbind", bdf)
    _restore(files, bdf, dev, target)
    if files.exists(state):
        os.unlink(files.path(state))
    return BindResult(bdf, before, driver_of(files, bdf))
