"""The host's readiness for fastmap: `fastmap doctor` and `fastmap bind/unbind`.

    report = diagnose_host()            # /dev/iommu, VFIO, IOMMUs, memlock, huge pages
    print(report.render()); report.usable
    bind_device("0000:03:00.0")         # driver_override dance, refusing devices in use

Every path is read below an injectable root (`HostFiles`), so tests run against a fake
sysfs tree; nothing here writes to sysfs except `bind_device`/`unbind_device`.
"""

from __future__ import annotations

from fastmap.host.devbind import BindResult, DeviceInUseError, bind_device, unbind_device
from fastmap.host.doctor import diagnose_host
from fastmap.host.files import HostFiles
from fastmap.host.report import Finding, Report
from fastmap.host.simdoctor import describe_sim

__all__ = [
    "BindResult",
    "DeviceInUseError",
    "Finding",
    "HostFiles",
    "Report",
    "bind_device",
    "describe_sim",
    "diagnose_host",
    "unbind_device",
]
