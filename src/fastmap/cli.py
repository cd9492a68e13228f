"""The `fastmap` command: the demo and the benchmarks.

    fastmap demo                 map, DMA through a simulated device, unmap (simulated kernel)
    fastmap bench map            map throughput five ways, side by side
    fastmap bench all            every benchmark (--json FILE, --plot FILE.png)
    fastmap migrate-demo         live-migration pre-copy of guest RAM, driven by IOMMU
                                 dirty tracking, while a device writes it
    fastmap sim-run -- PROG ...  run an unmodified program on the simulated kernel

`--kernel real|sim` picks the kernel (default: real where /dev/iommu exists, else sim;
FASTMAP_KERNEL also sets it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fastmap.kernel import Kernel
from fastmap.seam import open_kernel


def _kernel(args: argparse.Namespace) -> Kernel:
    return open_kernel(args.kernel)


def cmd_demo(args: argparse.Namespace) -> int:
    from fastmap._tools.demo import run_demo

    return run_demo(_kernel(args), print)


def cmd_migrate_demo(args: argparse.Namespace) -> int:
    from fastmap._tools.precopy import DemoOptions, run_demo

    return run_demo(DemoOptions.from_args(args, args.kernel or "sim"), print)


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
        type=float,
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastmap", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--kernel", choices=("real", "sim"), default=None, help="which kernel to use"
    )
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
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
