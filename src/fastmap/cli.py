"""The `fastmap` command: demos, benchmarks, host diagnosis and device binding.

    fastmap demo                 map, DMA through a simulated device, unmap (simulated kernel)
    fastmap bench map            map throughput five ways, side by side
    fastmap bench all            every benchmark
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
from collections.abc import Callable, Sequence

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


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from fastmap._tools.demo import run_demo

    return run_demo(_kernel(args), print)


def cmd_bench_map(args: argparse.Namespace) -> int:
    from fastmap._tools.bench_map import SIZES, ratios, run_lifecycle_benchmark, run_map_benchmark

    kernel = _kernel(args)
    rows = run_map_benchmark(kernel, SIZES, repeat=args.repeat, scale=args.scale)
    print(
        f"map throughput on the {kernel.name} kernel (no device attached: bookkeeping + call cost)"
    )
    print(
        _table(
            ["size", "method", "entries", "ms", "maps/s"],
            [
                (r.size, r.method, r.entries, f"{r.seconds * 1e3:.2f}", f"{r.maps_per_second:,.0f}")
                for r in rows
            ],
        )
    )
    for size, rs in ratios(rows).items():
        print(f"{size}: " + ", ".join(f"{k} {v:.2f}x" for k, v in rs.items()))
    life = run_lifecycle_benchmark(
        kernel, max(1, int(100_000 * args.scale)), 4 << 10, repeat=max(1, args.repeat)
    )
    r = life.ratios
    print(
        f"whole operations, {life.entries:,} x 4 KiB (best of {max(1, args.repeat)}, one run):\n"
        f"  map + first translate {life.map_indexed * 1e3:.1f} ms = "
        f"{r['map_indexed_over_floor']:.2f}x the map floor ({life.map_floor * 1e3:.1f} ms; "
        f"target <= 1.2x)\n"
        f"  unmap_batch {life.unmap_batch * 1e3:.1f} ms = {r['unmap_batch_over_floor']:.2f}x "
        f"the unmap floor ({life.unmap_floor * 1e3:.1f} ms; target <= 1.2x)\n"
        f"  translate_va_bulk {r['translate_lookups_per_s'] / 1e6:.1f} M lookups/s "
        f"(target >= 5 M/s)\n"
        f"  {life.threads} IOASes mapped from {life.threads} threads: "
        f"{r['separate_ioases_speedup']:.2f}x the serial time's speed"
    )
    return 0


def cmd_bench_dirty(args: argparse.Namespace) -> int:
    from fastmap._tools.bench_dirty import run_dirty_benchmark

    kernel = _kernel(args)
    rows = run_dirty_benchmark(kernel, repeat=max(1, args.repeat), scale=args.scale)
    print(f"dirty tracking on the {kernel.name} kernel (harvest through the selftest mock domain)")

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("met" if ok else "MISSED")

    print(
        _table(
            ["group", "case", "best ms", "median ms", "GiB/s", "target ms", "target", "note"],
            [
                (
                    r.group,
                    r.name,
                    f"{r.seconds * 1e3:.3f}",
                    f"{r.median * 1e3:.3f}",
                    f"{r.gib_per_s:,.0f}",
                    "-" if r.target is None else f"{r.target * 1e3:g}",
                    verdict(r.meets_target),
                    r.note,
                )
                for r in rows
            ],
        )
    )
    return 0


def cmd_bench_alloc(args: argparse.Namespace) -> int:
    from fastmap._tools.bench_alloc import ReferenceModel, default_backends, measure_alloc

    backends = [*default_backends(), ReferenceModel]
    rows = measure_alloc(backends=backends, max_seconds=2.0 * args.scale)
    print("IOVA allocator: alloc+free pairs per second (first fit, 1-8 page ranges, 1 TiB window)")
    ref = {r.live: r.pairs_per_second for r in rows if r.impl == "python reference"}
    print(
        _table(
            ["live ranges", "implementation", "pairs", "pairs/s", "pairs/CPU-s", "vs reference"],
            [
                (
                    f"{r.live:,}",
                    r.impl,
                    f"{r.pairs:,}",
                    f"{r.pairs_per_second:,.0f}",
                    f"{r.pairs_per_cpu_second:,.0f}",
                    f"{r.pairs_per_second / ref[r.live]:,.3g}x" if ref.get(r.live) else "-",
                )
                for r in rows
            ],
        )
    )
    return 0


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


def cmd_bench_simrun(args: argparse.Namespace) -> int:
    from fastmap._tools.bench_simrun import run_simrun_benchmark

    scale = max(args.scale, 0.01)
    rows = run_simrun_benchmark(
        calls=int(200_000 * scale), child_calls=int(20_000 * scale), repeat=max(1, args.repeat)
    )
    print("per-ioctl cost of the simulated kernel's entry paths (IOMMU_OPTION get)")
    print(
        _table(
            ["path", "calls", "ns/call"], [(r.mode, r.calls, f"{r.ns_per_call:,.0f}") for r in rows]
        )
    )
    direct = next(r.ns_per_call for r in rows if r.mode == "direct")
    for r in rows:
        if r.mode in ("owner", "child"):
            print(
                f"sim-run {r.mode}: +{(r.ns_per_call - direct) / 1e3:.2f} us per ioctl over direct"
            )
    return 0


_BENCHES: dict[str, Callable[[argparse.Namespace], int]] = {
    "alloc": cmd_bench_alloc,
    "map": cmd_bench_map,
    "dirty": cmd_bench_dirty,
    "simrun": cmd_bench_simrun,
}


def cmd_bench(args: argparse.Namespace) -> int:
    names = list(_BENCHES) if args.which == "all" else [args.which]
    for name in names:
        rc = _BENCHES[name](args)
        if rc:
            return rc
    return 0


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
    bench = sub.add_parser("bench", help="run benchmarks and print tables")
    bench.add_argument("which", choices=(*_BENCHES, "all"))
    bench.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    bench.add_argument("--scale", type=float, default=1.0, help="shrink the sizes (quick runs)")
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
