"""`fastmap --kernel sim doctor`: the simulated machine, described as the doctor sees a host.

The simulator answers /dev/iommu, VFIO cdevs and groups, and the VFIO part of sysfs; its
limits (RLIMIT_MEMLOCK, CAP_IPC_LOCK, transparent huge pages, the selftest interface) are
its `SimConfig`. Devices are whatever has been plugged into its machine: the report lists
them with what IOMMU_GET_HW_INFO answers for each, as on a real host.
"""

from __future__ import annotations

from fastmap.host.hwinfo import probe_or_reason
from fastmap.host.report import Report
from fastmap.lifecycle.sysfs import SimSysfs
from fastmap.sim import SimKernel


def describe_sim(kernel: SimKernel) -> Report:
    """What `kernel` models, and the devices its machine holds."""
    cfg = kernel.config
    v = cfg.kernel_version
    report = Report(
        f"fastmap doctor: the simulated kernel (Linux {v // 100}.{v % 100}, in-process)"
    )
    s = "IOMMUFD"
    report.add(s, "ok", "/dev/iommu: answered by the simulator (no real device or module needed)")
    report.add(
        s,
        "info",
        "iommufd selftest (IOMMU_TEST_CMD, mock domains): " + ("yes" if cfg.iommufd_test else "no"),
    )
    sysfs = SimSysfs(kernel.sim)
    s = "IOMMU hardware (/sys/class/iommu)"
    units = sysfs.listdir("/sys/class/iommu")
    report.add(s, "info", f"units: {', '.join(units) or 'none until a device is plugged in'}")
    s = "VFIO"
    devices = kernel.machine.devices()
    if not devices:
        report.add(
            s,
            "info",
            "no device plugged in",
            "in Python: kernel.machine.add_pci_device(bdf=..., iommu='vtd'|'mock', dirty=...);"
            " for a program: fastmap sim-run --device edu[,iommu=mock][,dirty=1] -- PROG",
        )
    for dev in devices:
        bdf = str(dev["bdf"])
        vendor, device = sysfs.pci_ids(str(dev["sysfs"]))
        report.add(
            s,
            "ok",
            f"{bdf} [{vendor:04x}:{device:04x}] bound to vfio-pci, group "
            f"{dev['group']} ({dev['group_path']}), cdev {dev['cdev']}",
        )
        info = probe_or_reason(kernel, bdf)
        if isinstance(info, str):
            report.add(s, "info", f"{bdf} IOMMU_GET_HW_INFO: not available ({info})")
        else:
            report.add(s, "ok", f"{bdf} IOMMU_GET_HW_INFO: {info.describe()}")
    s = "Memory"
    if cfg.cap_ipc_lock:
        report.add(s, "ok", "CAP_IPC_LOCK: pinned pages are not charged to RLIMIT_MEMLOCK")
    else:
        report.add(s, "info", f"RLIMIT_MEMLOCK {cfg.rlimit_memlock:,} bytes (charged)")
    report.add(
        s,
        "info",
        "transparent huge pages: "
        + ("on (IOVA alignment up to 2 MiB)" if cfg.transparent_hugepage else "off"),
    )
    report.add(s, "info", f"Type1 dma_entry_limit {cfg.dma_entry_limit:,}")
    report.verdict = (
        "Usable: the simulated kernel needs nothing from the host. It models Linux "
        f"{v // 100}.{v % 100} call by call; `fastmap --kernel real doctor` checks this host."
    )
    return report
