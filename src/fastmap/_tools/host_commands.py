"""`fastmap doctor`, `fastmap bind BDF` and `fastmap unbind BDF` (fastmap.host does the work)."""

from __future__ import annotations

import argparse

from fastmap.host.devbind import bind_device, unbind_device
from fastmap.host.doctor import diagnose_host
from fastmap.host.files import HostFiles
from fastmap.host.simdoctor import describe_sim
from fastmap.seam import open_kernel
from fastmap.sim import SimKernel


def cmd_doctor(args: argparse.Namespace) -> int:
    # The host by default, even where /dev/iommu is missing (explaining that is the point).
    if args.kernel == "sim":
        kernel = open_kernel("sim")  # this process's simulated machine
        assert isinstance(kernel, SimKernel)
        report = describe_sim(kernel)
    else:
        report = diagnose_host(HostFiles(args.root))
    print(report.to_json() if args.json else report.render())
    return report.exit_code


def cmd_bind(args: argparse.Namespace) -> int:
    result = bind_device(args.bdf, HostFiles(args.root), force=args.force)
    print(result.describe())
    return 0


def cmd_unbind(args: argparse.Namespace) -> int:
    result = unbind_device(args.bdf, HostFiles(args.root), driver=args.driver, force=args.force)
    print(result.describe())
    return 0


def _root_option(p: argparse.ArgumentParser) -> None:
    # Hidden: tests point it at a fake tree; users have no reason to.
    p.add_argument("--root", default="/", help=argparse.SUPPRESS)


def add_host_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The doctor, bind and unbind subcommands."""
    doctor = sub.add_parser(
        "doctor",
        help="check this host for IOMMUFD/VFIO, with the fix for each missing piece "
        "(--kernel sim: describe the simulated kernel); exit 0 when usable",
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    _root_option(doctor)
    doctor.set_defaults(func=cmd_doctor)
    bind = sub.add_parser(
        "bind",
        help="hand a PCI device to vfio-pci (driver_override), refusing devices in use",
    )
    bind.add_argument("bdf", help="PCI address, e.g. 0000:03:00.0")
    bind.add_argument("--force", action="store_true", help="bind even if the host uses it")
    _root_option(bind)
    bind.set_defaults(func=cmd_bind)
    unbind = sub.add_parser(
        "unbind", help="give a PCI device back from vfio-pci to its original driver"
    )
    unbind.add_argument("bdf", help="PCI address, e.g. 0000:03:00.0")
    unbind.add_argument(
        "--driver", default=None, help="bind to this driver (default: the one it had before)"
    )
    unbind.add_argument(
        "--force", action="store_true", help="unbind even while a process has it open"
    )
    _root_option(unbind)
    unbind.set_defaults(func=cmd_unbind)
