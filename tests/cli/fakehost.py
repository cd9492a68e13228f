"""A fake host tree (/sys, /dev, /proc, /boot) for the doctor and the binder, and a stand-in
for the kernel's side of the driver_override dance, so neither touches this machine.

`FakeHost.files` is a HostFiles whose writes to unbind, driver_override, drivers_probe and
drivers/NAME/bind move the device's `driver` link the way the PCI core does.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastmap.host.files import HostFiles

DEVICES = "sys/bus/pci/devices"
DRIVERS = "sys/bus/pci/drivers"


class FakeHost:
    def __init__(self, root: Path) -> None:
        self.root = root
        #: The driver drivers_probe picks for a device without a driver_override.
        self.native: dict[str, str | None] = {}
        self.writes: list[tuple[str, str]] = []
        self.files = _KernelFiles(self)
        for d in (
            DEVICES,
            DRIVERS,
            "sys/class/iommu",
            "sys/kernel/iommu_groups",
            "dev",
            "proc/self",
            "proc/net",
            "sys/kernel/mm/hugepages",
        ):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.write("proc/sys/kernel/osrelease", "6.12.0-test")
        self.write("proc/cpuinfo", "flags\t\t: fpu vme sse2\n")
        self.write(
            "proc/self/limits",
            "Max locked memory         8388608              8388608              bytes\n",
        )
        self.write("proc/self/status", "CapEff:\t0000000000000000\n")
        self.write("proc/net/route", "Iface\tDestination\tGateway\n")
        self.write("proc/mounts", "/dev/vda1 / ext4 rw 0 0\n")
        self.write("proc/cmdline", "quiet")

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def link(self, rel: str, target: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.symlink_to(target)

    def config(self, **options: str) -> None:
        text = "\n".join(f"CONFIG_{k}={v}" for k, v in options.items())
        self.write("boot/config-6.12.0-test", text + "\n")

    def add_driver(self, name: str) -> None:
        (self.root / DRIVERS / name).mkdir(parents=True, exist_ok=True)

    def add_iommu_units(self) -> None:
        """/dev/iommu, the modules, a VT-d unit with scalable mode + nesting + dirty bits."""
        self.write("dev/iommu", "")
        (self.root / "sys/module/iommufd").mkdir(parents=True, exist_ok=True)
        ecap = (1 << 43) | (1 << 45) | (1 << 48) | (1 << 26)
        self.write("sys/class/iommu/dmar0/intel-iommu/cap", "d2008c40660462\n")
        self.write("sys/class/iommu/dmar0/intel-iommu/ecap", f"{ecap:x}\n")
        (self.root / "sys/class/iommu/dmar0/devices").mkdir(parents=True, exist_ok=True)

    def add_device(
        self,
        bdf: str,
        driver: str | None,
        group: int | None = 1,
        vendor: int = 0x1234,
        device: int = 0x11E8,
        klass: int = 0x00FF00,
    ) -> None:
        dev = f"{DEVICES}/{bdf}"
        self.write(f"{dev}/vendor", f"{vendor:#06x}\n")
        self.write(f"{dev}/device", f"{device:#06x}\n")
        self.write(f"{dev}/class", f"{klass:#08x}\n")
        self.write(f"{dev}/driver_override", "(null)\n")
        if group is not None:
            (self.root / f"sys/kernel/iommu_groups/{group}/devices").mkdir(
                parents=True, exist_ok=True
            )
            self.link(f"{dev}/iommu_group", f"../../../../kernel/iommu_groups/{group}")
            self.link(
                f"sys/kernel/iommu_groups/{group}/devices/{bdf}",
                f"../../../../bus/pci/devices/{bdf}",
            )
            self.link(f"{dev}/iommu", "../../../../class/iommu/dmar0")
        self.native[bdf] = driver if driver != "vfio-pci" else None
        if driver is not None:
            self.add_driver(driver)
            self.bind(bdf, driver)

    def driver(self, bdf: str) -> str | None:
        link = self.root / DEVICES / bdf / "driver"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def bind(self, bdf: str, driver: str) -> None:
        self.link(f"{DEVICES}/{bdf}/driver", f"../../drivers/{driver}")
        self.link(f"{DRIVERS}/{driver}/{bdf}", f"../../devices/{bdf}")
        if driver == "vfio-pci":
            (self.root / DEVICES / bdf / "vfio-dev/vfio0").mkdir(parents=True, exist_ok=True)
            self.write(f"{DEVICES}/{bdf}/vfio-dev/vfio0/dev", "511:0\n")
            self.write("dev/vfio/devices/vfio0", "")
            group = self.files.readlink_name(f"/{DEVICES}/{bdf}/iommu_group")
            self.write(f"dev/vfio/{group}", "")
            self.write("dev/vfio/vfio", "")

    def unbind(self, bdf: str) -> None:
        driver = self.driver(bdf)
        assert driver is not None, f"unbind of {bdf}, which has no driver"
        (self.root / DEVICES / bdf / "driver").unlink()
        (self.root / DRIVERS / driver / bdf).unlink()
        if driver == "vfio-pci":
            for p in (self.root / DEVICES / bdf / "vfio-dev").rglob("*"):
                if p.is_file():
                    p.unlink()

    def probe(self, bdf: str) -> None:
        if self.driver(bdf) is not None:
            return
        override = (self.root / DEVICES / bdf / "driver_override").read_text().strip()
        want = None if override in ("", "(null)") else override
        want = want or self.native.get(bdf)
        if want is None or not (self.root / DRIVERS / want).is_dir():
            raise OSError(19, "No such device")
        if want == "vfio-pci" and not (self.root / DEVICES / bdf / "iommu_group").exists():
            raise OSError(22, "Invalid argument")
        self.bind(bdf, want)


class _KernelFiles(HostFiles):
    def __init__(self, host: FakeHost) -> None:
        super().__init__(str(host.root))
        self._host = host

    def write(self, path: str, text: str) -> None:
        self._host.writes.append((path, text))
        parts = path.strip("/").split("/")
        if path == "/sys/bus/pci/drivers_probe":
            self._host.probe(text)
        elif path.endswith("/driver/unbind"):
            self._host.unbind(parts[4])
        elif len(parts) == 6 and path.startswith("/sys/bus/pci/drivers/") and parts[5] == "bind":
            self._host.bind(text, parts[4])
        elif path.endswith("/driver_override"):
            super().write(path, text.strip() + "\n" if text.strip() else "(null)\n")
        else:
            super().write(path, text)
