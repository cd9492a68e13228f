"""The `fastmap` command: demos, benchmarks, host diagnosis and device binding.

    fastmap demo                 map, DMA through a simulated device, unmap (simulated kernel)
    fastmap bench map            map throughput five ways, side by side
    fastmap bench all            every benchmark (--json FILE, --plot FILE.png)
    fastmap migrate-demo         live-migration pre-copy of guest RAM, driven by IOMMU
                                 dirty tracking, while a device writes it
    fastmap sim-run -- PROG ...  run an unmodified program on the simulated kernel
    fastmap doctor               can this host run fastmap on its kernel? what is missing?
    fastmap bind|unbind BDF      hand a PCI device to vfio-pci and back

`--kernel real|sim` picks the kernel (default: real where /dev/iommu exists, else sim;
FASTMAP_KERNEL also sets it). Global options go before or after the subcommand. An expected
failure prints one line and exits non-zero; `-v` shows its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from collections.abc import Sequence

from fastmap.errors import FastmapError
from fastmap.kernel import Kernel
from fastmap.seam import default_kind, open_kernel


def _kernel(args: argparse.Namespace) -> Kernel:
    kind = args.kernel or default_kind()
    if kind == "real" and not os.path.exists("/dev/iommu"):
        # Say so now, rather than failing later on whatever the command looks for first.
        from fastmap.lifecycle.backend import IommufdUnavailableError, _open_hint

        raise IommufdUnavailableError(
            errno.ENOENT, "open(/dev/iommu)", hint=_open_hint(errno.ENOENT, "/dev/iommu")
        )
    return open_kernel(kind)


def cmd_demo(args: argparse.Namespace) -> int:
    from fastmap._tools.demo import run_demo

    return run_demo(_kernel(args), print)


def cmd_migrate_demo(args: argparse.Namespace) -> int:
    from fastmap._tools.precopy import DemoOptions, run_demo

    if args.kernel == "real":
        _kernel(args)  # no /dev/iommu: say so before setting anything up
    return run_demo(DemoOptions.from_args(args, args.kernel or "sim"), print)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"must be > 0, not {text} (a device that writes nothing leaves nothing to iterate on)"
        )
    return value


def add_migrate_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The migrate-demo options (shared with examples/precopy.py)."""
    p.add_argument(
        "--device",
        choices=("auto", "edu", "mock"),
        default="auto",
        help="edu: a simulated edu device doing real DMA through the simulated IOMMU (sim "
        "only); mock: the iommufd selftest mock device (emulated writes, kernel dirty bits); "
        "auto: edu on the sim, mock on the real kernel",
    )
    p.add_argument(
        "--ram-mib", type=int, nargs="+", default=[48, 16], help="RAM block sizes in MiB"
    )
    p.add_argument(
        "--rate",
        type=_positive_float,
        default=None,
        help="device page writes per second (default: 50000 for edu, 5000 for mock)",
    )
    p.add_argument(
        "--bandwidth", type=float, default=512, help="emulated link in MiB/s (0: unlimited)"
    )
    p.add_argument(
        "--threshold", type=int, default=64, help="stop iterating at this many dirty pages"
    )
    p.add_argument("--max-rounds", type=int, default=30, help="pre-copy rounds at most")
    p.add_argument(
        "--huge-iopte",
        action="store_true",
        help="let the IOMMU map RAM with 2 MiB IOPTEs (one write then dirties 512 pages)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the RAM contents and writes")


def cmd_bench(args: argparse.Namespace) -> int:
    from fastmap._tools import bench_cli

    return bench_cli.run(args, _kernel(args))


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--kernel and -v, on the main parser and again on every subcommand. A subcommand's
    copy defaults to SUPPRESS, so it sets the value only when given after the subcommand."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--kernel", choices=("real", "sim"), default=default, help="which kernel to use"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
        help="show the traceback of a failure",
    )  # fmt: skip


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastmap")
    except PackageNotFoundError:
        return "unknown"


def _run(args: argparse.Namespace) -> int:
    """The subcommand; an expected failure becomes one line on stderr and exit status 1
    (a traceback with -v). Errors that are bugs keep their traceback."""
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        print("fastmap: interrupted", file=sys.stderr)
        return 130
    except (FastmapError, OSError, ValueError) as e:
        if args.verbose:
            traceback.print_exc()
        text = " ".join(str(e).split()) or type(e).__name__
        more = "" if args.verbose else " (-v for details)"
        print(f"fastmap {args.command}: {type(e).__name__}: {text}{more}", file=sys.stderr)
        return 1
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastmap", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"fastmap {_version()}")
    _global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="map memory, DMA through a simulated device, unmap")
    demo.set_defaults(func=cmd_demo)
    from fastmap._tools import bench_cli

    bench = sub.add_parser(
        "bench",
        help="run benchmarks and print tables (--json, --plot)",
        description=bench_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_cli.add_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    migrate = sub.add_parser(
        "migrate-demo",
        help="pre-copy live migration of guest RAM while a device DMA-writes it "
        "(default kernel: sim)",
    )
    add_migrate_demo_arguments(migrate)
    migrate.set_defaults(func=cmd_migrate_demo)
    simrun = sub.add_parser(
        "sim-run", help="run an unmodified C/C++/Rust program on the simulated kernel"
    )
    from fastmap import simrun as simrun_mod

    simrun_mod.add_arguments(simrun)
    simrun.set_defaults(func=simrun_mod.run)
    from fastmap._tools.host_commands import add_host_commands

    add_host_commands(sub)
    for name, subparser in sub.choices.items():
        if name != "sim-run":  # always the simulator; its arguments are the program's
            _global_options(subparser, top=False)
    args = parser.parse_args(argv)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
