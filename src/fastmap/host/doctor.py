"""`fastmap doctor` on a real host: can fastmap drive this machine's IOMMU, and if not, why.

It checks, in order: the kernel (release, build options), /dev/iommu and the iommufd module,
the IOMMU hardware (/sys/class/iommu: type, dirty tracking, nesting, PASID), VFIO (the
container, the cdevs in /dev/vfio/devices, the groups, the devices bound to vfio-pci and what
IOMMU_GET_HW_INFO says about each), then RLIMIT_MEMLOCK and huge pages. Every problem comes
with the command that fixes it. The host is usable when /dev/iommu opens; the rest limits
what works (devices, pinning, huge IOPTEs). Nothing here writes anything.
"""

from __future__ import annotations

import os
import re

from fastmap.host import iommu, kernelinfo
from fastmap.host.devbind import vfio_users
from fastmap.host.files import HostFiles
from fastmap.host.report import Report
from fastmap.kernel import Kernel
from fastmap.pci_address import is_canonical_bdf

IOMMU_DEV = "/dev/iommu"
VFIO_DRIVER = "/sys/bus/pci/drivers/vfio-pci"
PCI_DEVICES = "/sys/bus/pci/devices"
#: Below this much lockable memory (and without CAP_IPC_LOCK) pinning real buffers fails.
MEMLOCK_ENOUGH = 1 << 30

UDEV_RULE = (
    'printf \'%s\\n\' \'SUBSYSTEM=="misc", KERNEL=="iommu", GROUP="kvm", MODE="0660"\' '
    '\'SUBSYSTEM=="vfio", GROUP="kvm", MODE="0660"\' '
    "| sudo tee /etc/udev/rules.d/90-fastmap.rules\n"
    "sudo udevadm control --reload && sudo udevadm trigger && sudo usermod -aG kvm $USER"
)
MEMLOCK_FIX = (
    "ulimit -l unlimited   (needs the hard limit), or permanently:\n"
    'echo "$USER - memlock unlimited" | sudo tee /etc/security/limits.d/90-fastmap.conf\n'
    "(or give the program CAP_IPC_LOCK: sudo setcap cap_ipc_lock+ep <binary>)"
)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _option(cfg: tuple[dict[str, str], str] | None, name: str) -> str | None:
    """'y', 'm' or a value; '' when the config says not set; None when no config is known."""
    if cfg is None:
        return None
    return cfg[0].get(name, "")


def _check_kernel(files: HostFiles, report: Report) -> tuple[dict[str, str], str] | None:
    s = "Kernel"
    rel = kernelinfo.release(files)
    cfg = kernelinfo.config(files)
    vm = " (a virtual machine)" if kernelinfo.in_vm(files) else ""
    report.add(s, "info", f"Linux {rel}{vm}")
    if cfg is None:
        report.add(s, "info", "build options unknown (no /proc/config.gz or /boot/config-*)")
    else:
        shown = ", ".join(
            f"{name.removeprefix('CONFIG_')}={_option(cfg, name) or 'not set'}"
            for name in (
                "CONFIG_IOMMUFD",
                "CONFIG_VFIO",
                "CONFIG_VFIO_DEVICE_CDEV",
                "CONFIG_VFIO_PCI",
                "CONFIG_IOMMUFD_TEST",
            )
        )
        report.add(s, "info", f"{cfg[1]}: {shown}")
    return cfg


def _check_iommufd(
    files: HostFiles, report: Report, cfg: tuple[dict[str, str], str] | None
) -> bool:
    s = "IOMMUFD"
    option = _option(cfg, "CONFIG_IOMMUFD")
    loaded = files.exists("/sys/module/iommufd")
    if option == "y":
        report.add(s, "info", "iommufd is built into the kernel")
    elif loaded:
        report.add(s, "ok", "iommufd module loaded")
    if not files.exists(IOMMU_DEV):
        if option == "":
            report.add(
                s,
                "fail",
                f"no {IOMMU_DEV}: this kernel is built without CONFIG_IOMMUFD",
                "boot a kernel built with CONFIG_IOMMUFD=y or =m (Linux 6.2+; VFIO cdevs need "
                "6.6+ with CONFIG_VFIO_DEVICE_CDEV)",
            )
        else:
            report.add(
                s,
                "fail",
                f"no {IOMMU_DEV}: the iommufd module is not loaded",
                "sudo modprobe iommufd",
            )
        return False
    if not files.is_char_device(IOMMU_DEV):
        report.add(
            s,
            "fail",
            f"{IOMMU_DEV} is not a character device",
            "sudo modprobe -r iommufd && sudo modprobe iommufd (udev recreates it)",
        )
        return False
    if not files.access(IOMMU_DEV):
        report.add(
            s, "fail", f"{IOMMU_DEV} exists but this user may not open it read-write", UDEV_RULE
        )
        return False
    report.add(s, "ok", f"{IOMMU_DEV} opens read-write")
    return True


def _check_iommus(files: HostFiles, report: Report) -> list[iommu.IommuUnit]:
    s = "IOMMU hardware (/sys/class/iommu)"
    units = iommu.read_units(files)
    for unit in units:
        report.add(s, "ok", unit.describe())
    groups = files.listdir("/sys/kernel/iommu_groups")
    if units:
        report.add(s, "info", f"{len(groups)} IOMMU group(s)")
        return units
    cmdline = kernelinfo.cmdline(files)
    fix = (
        "enable VT-d / AMD-Vi (IOMMU) in the firmware setup, then boot with "
        "intel_iommu=on (Intel) or amd_iommu=on (AMD) on the kernel command line; in a "
        "virtual machine, give it a vIOMMU (QEMU: -device intel-iommu or "
        "-device virtio-iommu-pci)"
    )
    if "intel_iommu=off" in cmdline or "amd_iommu=off" in cmdline:
        fix = "remove intel_iommu=off / amd_iommu=off from the kernel command line"
    report.add(s, "warn", "no IOMMU: devices cannot be attached (IOASes without devices work)", fix)
    return units


def _bound_devices(files: HostFiles) -> list[str]:
    return [n for n in files.listdir(VFIO_DRIVER) if is_canonical_bdf(n)]


def _check_vfio(
    files: HostFiles,
    report: Report,
    cfg: tuple[dict[str, str], str] | None,
    kernel: Kernel | None,
) -> None:
    s = "VFIO"
    if files.exists("/dev/vfio/vfio"):
        report.add(s, "ok", "/dev/vfio/vfio (the legacy Type1 container) is there")
    if not files.is_dir(VFIO_DRIVER):
        if _option(cfg, "CONFIG_VFIO_PCI") == "":
            report.add(
                s,
                "warn",
                "no vfio-pci: the kernel is built without CONFIG_VFIO_PCI",
                "boot a kernel built with CONFIG_VFIO_PCI",
            )
        else:
            report.add(s, "warn", "the vfio-pci driver is not loaded", "sudo modprobe vfio-pci")
        return
    report.add(s, "ok", "vfio-pci driver loaded")
    if files.is_dir("/dev/vfio/devices"):
        cdevs = files.listdir("/dev/vfio/devices")
        report.add(s, "ok", f"/dev/vfio/devices: {', '.join(cdevs) or 'empty'}")
    else:
        report.add(
            s,
            "warn",
            "no /dev/vfio/devices: VFIO device cdevs are off, so devices "
            "can only be used through the legacy group/container path",
            "boot a kernel (6.6+) built with CONFIG_VFIO_DEVICE_CDEV=y",
        )
    groups = [g for g in files.listdir("/dev/vfio") if g.isdigit() or g.startswith("noiommu-")]
    report.add(s, "info", f"VFIO groups in /dev/vfio: {', '.join(groups) or 'none'}")
    bound = _bound_devices(files)
    if not bound:
        report.add(
            s,
            "warn",
            "no device is bound to vfio-pci",
            "sudo fastmap bind DOMAIN:BUS:DEV.FN   (see lspci -D)",
        )
    for bdf in bound:
        _check_device(files, report, bdf, kernel)


def _check_device(files: HostFiles, report: Report, bdf: str, kernel: Kernel | None) -> None:
    s = "VFIO"
    dev = f"{PCI_DEVICES}/{bdf}"
    ids = f"{(files.read(f'{dev}/vendor') or '?').removeprefix('0x')}:" + (
        files.read(f"{dev}/device") or "?"
    ).removeprefix("0x")
    group = files.readlink_name(f"{dev}/iommu_group")
    unit = files.readlink_name(f"{dev}/iommu")
    cdevs = [n for n in files.listdir(f"{dev}/vfio-dev") if n.startswith("vfio")]
    parts = [f"{bdf} [{ids}] bound to vfio-pci", f"group {group or '?'}"]
    if unit:
        parts.append(f"IOMMU {unit}")
    if cdevs:
        parts.append(f"cdev /dev/vfio/devices/{cdevs[0]}")
    report.add(s, "ok", ", ".join(parts))
    nodes = [f"/dev/vfio/devices/{cdevs[0]}"] if cdevs else []
    if group:
        nodes.append(f"/dev/vfio/{group}")
    for node in nodes:
        if files.exists(node) and not files.access(node):
            report.add(s, "warn", f"{node}: this user may not open it", UDEV_RULE)
    if group:
        for other in files.listdir(f"/sys/kernel/iommu_groups/{group}/devices"):
            driver = files.readlink_name(f"{PCI_DEVICES}/{other}/driver")
            if other != bdf and driver not in (None, "vfio-pci", "pci-stub", "pcieport"):
                report.add(
                    s,
                    "warn",
                    f"group {group} also holds {other} (driver {driver}): VFIO refuses the "
                    "group until every device in it is bound to vfio-pci or to no driver",
                    f"sudo fastmap bind {other}",
                )
    users = vfio_users(files, bdf)
    if users:
        # Binding it here would fail (a cdev opens for one user at a time): say who has it.
        report.add(s, "info", f"{bdf} is in use by {', '.join(users)}")
    elif kernel is not None and cdevs:
        from fastmap.host.hwinfo import probe_or_reason

        info = probe_or_reason(kernel, bdf)
        if isinstance(info, str):
            report.add(s, "info", f"{bdf} IOMMU_GET_HW_INFO: not available ({info})")
        else:
            report.add(s, "ok", f"{bdf} IOMMU_GET_HW_INFO: {info.describe()}")


def _check_memory(files: HostFiles, report: Report) -> None:
    s = "Memory"
    limits = kernelinfo.memlock(files)
    cap = kernelinfo.has_capability(files, kernelinfo.CAP_IPC_LOCK)
    if cap:
        report.add(s, "ok", "CAP_IPC_LOCK: pinned pages are not charged to RLIMIT_MEMLOCK")
    if cap and limits is not None:
        report.add(
            s, "info", f"RLIMIT_MEMLOCK {'unlimited' if limits[0] is None else _size(limits[0])}"
        )
    elif limits is None:
        report.add(s, "info", "RLIMIT_MEMLOCK unknown (no /proc/self/limits)")
    else:
        soft = limits[0]
        shown = "unlimited" if soft is None else _size(soft)
        if soft is None or soft >= MEMLOCK_ENOUGH:
            report.add(s, "ok", f"RLIMIT_MEMLOCK {shown}")
        else:
            report.add(
                s,
                "warn",
                f"RLIMIT_MEMLOCK {shown}: mapping more than that for a device fails with ENOMEM",
                MEMLOCK_FIX,
            )
    for name in files.listdir("/sys/kernel/mm/hugepages"):
        base = f"/sys/kernel/mm/hugepages/{name}"
        size_kib = int(name.removeprefix("hugepages-").removesuffix("kB") or 0)
        total = files.read(f"{base}/nr_hugepages") or "0"
        free = files.read(f"{base}/free_hugepages") or "0"
        label = _size(size_kib << 10)
        if total.isdigit() and int(total) > 0:
            report.add(s, "ok", f"{label} huge pages: {total} reserved, {free} free")
        elif size_kib >= 1 << 20:
            report.add(
                s,
                "info",
                f"{label} huge pages: none reserved",
                f"boot with hugepagesz=1G hugepages=N (or echo N | sudo tee {base}/"
                "nr_hugepages, which may fail once memory is fragmented)",
            )
        else:
            report.add(
                s,
                "info",
                f"{label} huge pages: none reserved",
                f"echo 512 | sudo tee {base}/nr_hugepages",
            )
    thp = files.read("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp is not None:
        mode = re.search(r"\[(\w+)\]", thp)
        report.add(s, "info", f"transparent huge pages: {mode.group(1) if mode else thp}")


def _verdict(files: HostFiles, report: Report, cfg: tuple[dict[str, str], str] | None) -> str:
    if report.usable:
        return "Usable: fastmap drives this kernel's IOMMUFD (--kernel real is the default)."
    reasons = []
    if _option(cfg, "CONFIG_IOMMUFD") == "":
        reasons.append("this kernel is built without iommufd")
    if not iommu.read_units(files):
        reasons.append(
            "the machine exposes no IOMMU"
            + (": a virtual machine without a vIOMMU" if kernelinfo.in_vm(files) else "")
        )
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return (
        f"Not usable with the real kernel: no usable /dev/iommu{why}. fastmap runs here on "
        "its simulated kernel instead (the default without /dev/iommu): `fastmap "
        "--kernel sim doctor` describes it, `fastmap demo` runs on it. The real-kernel tests "
        "run in a VM: tools/vmtest/run.sh."
    )


def diagnose_host(files: HostFiles | None = None, kernel: Kernel | None = None) -> Report:
    """Check the host below `files` (default: this machine). `kernel` answers
    IOMMU_GET_HW_INFO for bound devices; by default the real kernel when `files` is this
    machine and /dev/iommu opens, else no probe."""
    files = files or HostFiles()
    node = os.uname().nodename if files.is_real else files.root
    report = Report(f"fastmap doctor: this host{'' if node in ('', '(none)') else f' ({node})'}")
    cfg = _check_kernel(files, report)
    iommufd_ok = _check_iommufd(files, report, cfg)
    _check_iommus(files, report)
    if kernel is None and iommufd_ok and files.is_real:
        from fastmap.kernel import RealKernel

        kernel = RealKernel()
    _check_vfio(files, report, cfg, kernel if iommufd_ok else None)
    _check_memory(files, report)
    report.verdict = _verdict(files, report, cfg)
    return report
