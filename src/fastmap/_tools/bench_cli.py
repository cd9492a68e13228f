"""`fastmap bench`: the options every benchmark shares, and each benchmark's rows as tables.

    fastmap bench map|pinned|batch|threads|dirty|alloc|simrun|all
        [--entries N] [--seconds S] [--repeat R] [--json FILE] [--plot FILE.png] [--progress]

`--entries N`: every case of the benchmark processes N items (mappings, 4 KiB pages of
guest memory, live ranges or ioctl calls; each table says which); without it each case runs
at the size its row names. `--seconds S`: no new round of a case starts once its rounds have
used S seconds (each case runs at least once). `--repeat R`: best of at most R rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastmap._tools.bench_progress import Progress
from fastmap._tools.bench_table import Column, Table, render
from fastmap.kernel import Kernel

__all__ = ["BENCHES", "add_arguments", "environment", "run"]

Step = Callable[[str], object]


# --- option values ----------------------------------------------------------------------------
def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def positive_seconds(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return x


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", choices=(*BENCHES, "all"), help="which benchmark ('all': each)")
    p.add_argument(
        "--entries",
        type=positive_int,
        default=None,
        help="items per case (mappings, 4 KiB pages, live ranges or calls; default: each "
        "case's own size)",
    )
    p.add_argument(
        "--seconds",
        type=positive_seconds,
        default=None,
        help="time budget per case: no new round starts after it (default: none; alloc: 2)",
    )
    p.add_argument(
        "--repeat", type=positive_int, default=3, help="best of at most this many rounds"
    )
    p.add_argument("--threads", type=positive_int, default=2, help="N for map_batch(threads=N)")
    p.add_argument("--json", metavar="FILE", help="also write every row, with units, as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="also plot the results (needs fastmap[plot])")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress on stderr (default: when stderr is a terminal)",
    )
    p.add_argument(
        "--page-size",
        action="append",
        choices=("4KiB", "2MiB", "1GiB"),
        help="pinned: only these page sizes (repeatable; default: all three)",
    )


# --- one table per benchmark ------------------------------------------------------------------
def _ms(x: float) -> str:
    return f"{x * 1e3:,.2f}"


def _rate(x: float) -> str:
    return f"{x:,.0f}"


def _ratio(x: float) -> str:
    return f"{x:.2f}x"


def _count(x: int) -> str:
    return f"{x:,}"


#: The throughput columns of every map table (map, pinned, batch, threads), and their values.
_MAP_RATE_COLUMNS = (
    Column("entries", "count", fmt=_count),
    Column("seconds", "s", "ms", _ms),
    Column("maps_per_s", "maps/s", "maps/s", _rate),
)


def _map_rate(r: Any) -> dict[str, Any]:
    """A map benchmark row's _MAP_RATE_COLUMNS values (any row with entries, seconds and
    maps_per_second)."""
    return {"entries": r.entries, "seconds": r.seconds, "maps_per_s": r.maps_per_second}


def bench_map(kernel: Kernel, args: argparse.Namespace, step: Step) -> list[Table]:
    from fastmap._tools.bench_map import ratios, run_lifecycle_benchmark, run_map_benchmark

    rows = run_map_benchmark(
        kernel, repeat=args.repeat, entries=args.entries, seconds=args.seconds, on_step=step
    )
    floor = {r.size: r.seconds for r in rows if r.method == "floor"}
    t = Table(
        "map",
        f"map throughput on the {kernel.name} kernel, no device attached (bookkeeping + call "
        "cost); entries = mappings",
        [
            Column("size", "", "size"),
            Column("method"),
            *_MAP_RATE_COLUMNS,
            Column("over_floor", "ratio", "vs floor", _ratio),
        ],
        [
            {
                "size": r.size.split(" x ")[-1],  # the count is in "entries"
                "method": r.method,
                **_map_rate(r),
                "over_floor": r.seconds / floor[r.size] if floor.get(r.size) else None,
            }
            for r in rows
        ],
    )
    for size, rs in ratios(rows).items():
        t.notes.append(
            f"{size.split(' x ')[-1]}: " + ", ".join(f"{k} {v:.2f}x" for k, v in rs.items())
        )
    n = args.entries or 100_000
    life = run_lifecycle_benchmark(
        kernel,
        n,
        4 << 10,
        repeat=args.repeat,
        threads=args.threads,
        seconds=args.seconds,
        on_step=step,
    )
    r = life.ratios
    lt = Table(
        "lifecycle",
        f"whole operations, {life.entries:,} x 4 KiB, best of {args.repeat} (one run)",
        [
            Column("operation"),
            Column("seconds", "s", "ms", _ms),
            Column("floor_seconds", "s", "floor ms", _ms),
            Column("over_floor", "ratio", "vs floor", _ratio),
            Column("target", "ratio", "target", lambda v: f"<= {v}x"),
        ],
        [
            {
                "operation": "map + first translate",
                "seconds": life.map_indexed,
                "floor_seconds": life.map_floor,
                "over_floor": r["map_indexed_over_floor"],
                "target": 1.2,
            },
            {
                "operation": "unmap_batch",
                "seconds": life.unmap_batch,
                "floor_seconds": life.unmap_floor,
                "over_floor": r["unmap_batch_over_floor"],
                "target": 1.2,
            },
        ],
        [
            f"translate_va_bulk: {r['translate_lookups_per_s'] / 1e6:.1f} M lookups/s "
            "(target >= 5 M/s)",
            f"{life.threads} IOASes mapped from {life.threads} threads: "
            f"{r['separate_ioases_speedup']:.2f}x the serial time's speed",
        ],
    )
    return [t, lt]


def bench_pinned(kernel: Kernel, args: argparse.Namespace, step: Step) -> list[Table]:
    from fastmap._tools.bench_pinned import PAGE_SIZES, run_pinned_benchmark

    pages = tuple(args.page_size or PAGE_SIZES)
    rows = run_pinned_benchmark(
        kernel, pages, args.entries, args.repeat, args.seconds, args.threads, step
    )
    floor = {r.page: r.seconds for r in rows if r.method == "floor"}
    naive = {r.page: r.seconds for r in rows if r.method == "naive"}
    fallbacks = {f"{r.page} pages: {r.fallback}" for r in rows if r.fallback}
    return [
        Table(
            "pinned",
            f"map with an IOMMU domain attached (edu device: every map pins) on the "
            f"{kernel.name} kernel; entries = mappings of one page each",
            [
                Column("page", "", "page"),
                Column("method"),
                *_MAP_RATE_COLUMNS,
                Column("gib_per_s", "GiB/s", "GiB/s", lambda v: f"{v:,.1f}"),
                Column("over_floor", "ratio", "vs floor", _ratio),
                Column("vs_naive", "ratio", "vs naive", _ratio),
                Column("threads", "count", "thr"),
                Column("backing", "", "memory"),
                Column("fallback", "", hidden=True),
                Column("length", "bytes", hidden=True),
            ],
            [
                {
                    "page": r.page,
                    "method": r.method,
                    **_map_rate(r),
                    "gib_per_s": r.gib_per_second,
                    "over_floor": r.seconds / floor[r.page],
                    "vs_naive": naive[r.page] / r.seconds,
                    "threads": r.threads,
                    "backing": r.backing,
                    "fallback": r.fallback,
                    "length": r.length,
                }
                for r in rows
            ],
            [
                "vs floor: time over the C++ ioctl loop's; vs naive: speed-up over the Python loop",
                *sorted(fallbacks),
            ],
        )
    ]


def bench_batch(kernel: Kernel, args: argparse.Namespace, step: Step) -> list[Table]:
    from fastmap._tools.bench_sweep import run_batch_sweep

    rows = run_batch_sweep(kernel, args.entries or 100_000, args.repeat, args.seconds, on_step=step)
    return [
        Table(
            "batch",
            f"map throughput against batch size, {rows[0].entries:,} x 4 KiB, no device, "
            f"{kernel.name} kernel (naive: one ioctl per entry, whatever the batch)",
            [
                Column("batch", "count", "entries/call", _count),
                Column("method"),
                *_MAP_RATE_COLUMNS,
            ],
            [
                {
                    "batch": r.batch,
                    "method": r.method,
                    **_map_rate(r),
                }
                for r in rows
            ],
        )
    ]


def bench_threads(kernel: Kernel, args: argparse.Namespace, step: Step) -> list[Table]:
    from fastmap._tools.bench_sweep import run_thread_benchmark

    counts = tuple(sorted({1, 2, args.threads}))
    rows = run_thread_benchmark(
        kernel, args.entries or 100_000, args.repeat, args.seconds, counts, on_step=step
    )
    serial = {r.target: r.seconds for r in rows if r.threads == 1}
    return [
        Table(
            "threads",
            f"map_batch(threads=N) and N IOASes from N threads, {rows[0].entries:,} x 4 KiB, "
            f"{kernel.name} kernel, {os.cpu_count()} CPUs",
            [
                Column("target", "", "where"),
                Column("threads", "count", "N"),
                *_MAP_RATE_COLUMNS,
                Column("speedup", "ratio", "vs N=1", _ratio),
            ],
            [
                {
                    "target": r.target,
                    "threads": r.threads,
                    **_map_rate(r),
                    "speedup": serial[r.target] / r.seconds,
                }
                for r in rows
            ],
        )
    ]


def bench_dirty(kernel: Kernel, args: argparse.Namespace, step: Step) -> list[Table]:
    from fastmap._tools.bench_dirty import run_dirty_benchmark

    rows = run_dirty_benchmark(
        kernel, repeat=args.repeat, pages=args.entries, seconds=args.seconds, on_step=step
    )

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("met" if ok else "MISSED")

    return [
        Table(
            "dirty",
            f"dirty tracking on the {kernel.name} kernel (harvest through the selftest mock "
            "domain); entries = 4 KiB pages of guest memory",
            [
                Column("name", "", "case"),
                Column("seconds", "s", "best ms", lambda v: f"{v * 1e3:,.3f}"),
                Column("median", "s", "median ms", lambda v: f"{v * 1e3:,.3f}"),
                Column("gib_per_s", "GiB/s", "GiB/s", lambda v: f"{v:,.0f}"),
                Column("target", "s", "target ms", lambda v: f"{v * 1e3:g}"),
                Column("meets_target", "", "target", verdict),
                Column("note"),
                Column("group", "", hidden=True),
                Column("rounds", "count", hidden=True),
                Column("guest_bytes", "bytes", hidden=True),
            ],
            [
                {
                    "group": r.group,
                    "name": r.name,
                    "seconds": r.seconds,
                    "median": r.median,
                    "rounds": r.rounds,
                    "guest_bytes": r.guest_bytes,
                    "gib_per_s": r.gib_per_s,
                    "target": r.target,
                    "meets_target": r.meets_target,
                    "note": r.note,
                }
                for r in rows
            ],
            group_by="group",
        )
    ]


def bench_alloc(kernel: Kernel, args: argparse.Namespace, step: Step) -> list[Table]:
    from fastmap._tools.bench_alloc import ReferenceModel, default_backends, measure_alloc

    kw: dict[str, Any] = {"max_seconds": args.seconds or 2.0}
    if args.entries is not None:
        kw["live_counts"] = (args.entries,)
    rows = measure_alloc(
        backends=[*default_backends(), ReferenceModel],
        on_row=lambda r: step(f"alloc: {r.impl} at {r.live:,} live ranges done"),
        **kw,
    )
    ref = {r.live: r.pairs_per_second for r in rows if r.impl == "python reference"}
    return [
        Table(
            "alloc",
            "IOVA allocator: alloc+free pairs per second (first fit, 1-8 page ranges, 1 TiB "
            "window); entries = live ranges",
            [
                Column("live", "count", "live ranges", _count),
                Column("impl", "", "implementation"),
                Column("pairs", "count", fmt=_count),
                Column("pairs_per_s", "pairs/s", "pairs/s", _rate),
                Column("pairs_per_cpu_s", "pairs/CPU-s", "pairs/CPU-s", _rate),
                Column("vs_reference", "ratio", "vs reference", lambda v: f"{v:,.3g}x"),
                Column("seconds", "s", hidden=True),
            ],
            [
                {
                    "live": r.live,
                    "impl": r.impl,
                    "pairs": r.pairs,
                    "seconds": r.seconds,
                    "pairs_per_s": r.pairs_per_second,
                    "pairs_per_cpu_s": r.pairs_per_cpu_second,
                    "vs_reference": r.pairs_per_second / ref[r.live] if ref.get(r.live) else None,
                }
                for r in rows
            ],
        )
    ]


def bench_simrun(kernel: Kernel, args: argparse.Namespace, step: Step) -> list[Table]:
    from fastmap._tools.bench_simrun import run_simrun_benchmark

    step("simrun: compiling and running the measuring program")
    rows = run_simrun_benchmark(
        calls=args.entries or 200_000,
        child_calls=args.entries or 20_000,
        repeat=args.repeat,
        seconds=args.seconds,
    )
    direct = next(r.ns_per_call for r in rows if r.mode == "direct")
    return [
        Table(
            "simrun",
            "per-ioctl cost of the simulated kernel's entry paths (IOMMU_OPTION get); "
            "entries = calls",
            [
                Column("mode", "", "path"),
                Column("calls", "count", fmt=_count),
                Column("ns_per_call", "ns", "ns/call", lambda v: f"{v:,.0f}"),
                Column("over_direct_ns", "ns", "over direct", lambda v: f"{v / 1e3:+.2f} us"),
            ],
            [
                {
                    "mode": r.mode,
                    "calls": r.calls,
                    "ns_per_call": r.ns_per_call,
                    "over_direct_ns": r.ns_per_call - direct
                    if r.mode in ("owner", "child")
                    else None,
                }
                for r in rows
            ],
        )
    ]


BENCHES: dict[str, Callable[[Kernel, argparse.Namespace, Step], list[Table]]] = {
    "alloc": bench_alloc,
    "map": bench_map,
    "pinned": bench_pinned,
    "batch": bench_batch,
    "threads": bench_threads,
    "dirty": bench_dirty,
    "simrun": bench_simrun,
}
#: What `bench all` runs (simrun needs gcc and the simulator's interposer; it runs when asked).
ALL = ("alloc", "map", "pinned", "batch", "threads", "dirty")


# --- the run ----------------------------------------------------------------------------------
def environment(kernel: Kernel) -> dict[str, Any]:
    """Machine, kernel and fastmap version, for the JSON file and the report."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        fastmap_version = version("fastmap")  # not `import fastmap`: _tools sit below it
    except PackageNotFoundError:
        fastmap_version = "unknown"
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    uname = platform.uname()
    return {
        "machine": {
            "cpu": cpu,
            "cpus": os.cpu_count(),
            "arch": uname.machine,
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "in_vm_tier": os.environ.get("FASTMAP_VMTEST") == "1",
            "iommu": os.environ.get("FASTMAP_VMTEST_IOMMU", ""),
        },
        "kernel": {
            "name": kernel.name,
            "version": kernel.version,
            "host_release": uname.release,
        },
        "fastmap_version": fastmap_version,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _command(args: argparse.Namespace, kernel: Kernel) -> list[str]:
    """The command line that repeats this run (from the options in force, not sys.argv:
    main() may have been given its own argv)."""
    words = ["fastmap", "--kernel", kernel.name, "bench", args.which]
    for opt in ("entries", "seconds", "repeat", "threads"):
        if getattr(args, opt) is not None:
            words += [f"--{opt}", str(getattr(args, opt))]
    for page in args.page_size or ():
        words += ["--page-size", page]
    if args.json:
        words += ["--json", args.json]
    return words


def _refuse(message: str) -> int:
    print(f"fastmap bench: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace, kernel: Kernel) -> int:
    """Runs the chosen benchmarks, prints their tables, writes --json and --plot."""
    names = list(ALL) if args.which == "all" else [args.which]
    if args.plot:
        # Refused before minutes of measuring, not after.
        from fastmap._tools import bench_plot

        if not any(n in bench_plot.PANELS for n in names):
            return _refuse(
                f"--plot: {args.which} has no figure (map, pinned, batch, threads and dirty have)"
            )
        try:
            bench_plot.require()
        except bench_plot.PlotUnavailableError as e:
            return _refuse(str(e))
    progress = Progress(args.progress)
    tables: list[Table] = []
    try:
        for name in names:
            for t in BENCHES[name](kernel, args, progress):
                progress.done()
                print(render(t))
                print()
                sys.stdout.flush()
                tables.append(t)
    finally:
        progress.done()
    if args.json:
        doc = {
            **environment(kernel),
            "command": _command(args, kernel),
            "options": {
                "entries": args.entries,
                "seconds": args.seconds,
                "repeat": args.repeat,
                "threads": args.threads,
            },
            "tables": [t.to_json() for t in tables],
        }
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    if args.plot:
        from fastmap._tools import bench_plot

        bench_plot.plot(tables, kernel.name, args.plot)
    return 0
