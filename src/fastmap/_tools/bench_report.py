"""Renders docs/benchmarks.md from `fastmap bench --json` files of two runs: one on the
simulated kernel, one on the real kernel (the VM tier), side by side, plus one figure per
kernel. `tools/bench-report.sh` makes the JSON files and calls this:

    python -m fastmap._tools.bench_report SIM_DIR REAL_DIR docs/benchmarks.md

Each directory holds the JSON files of one kernel (same file names in both).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastmap._tools.bench_table import Table

__all__ = ["load", "main", "render_report"]

Doc = dict[str, Any]


def load(directory: Path) -> list[Doc]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def _tables(docs: Sequence[Doc]) -> dict[str, dict[str, Any]]:
    """Per bench, the rows of every run of it (e.g. one pinned run per page size)."""
    out: dict[str, dict[str, Any]] = {}
    for d in docs:
        for t in d["tables"]:
            if t["bench"] not in out:
                out[t["bench"]] = {**t, "rows": list(t["rows"]), "notes": list(t["notes"])}
            else:
                out[t["bench"]]["rows"] += t["rows"]
                seen = out[t["bench"]]["notes"]
                seen += [n for n in t["notes"] if n not in seen]
    return out


def _command(doc: Doc) -> str:
    """The bench options of a run (from its recorded options), without kernel and files."""
    argv = doc["command"]
    words = ["fastmap --kernel sim|real bench", argv[argv.index("bench") + 1]]
    for opt in ("entries", "seconds", "repeat", "threads"):
        if doc["options"].get(opt) is not None:
            words += [f"--{opt}", str(doc["options"][opt])]
    words += [f"--page-size {v}" for w, v in itertools.pairwise(argv) if w == "--page-size"]
    return " ".join(words)


def _num(v: float | None, fmt: str = ",.0f") -> str:
    return "-" if v is None else format(v, fmt)


def _machine(d: Doc) -> str:
    m, k = d["machine"], d["kernel"]
    mem = m["memory_bytes"] / 2**30
    where = (
        f"QEMU guest (TCG, {m['iommu'] or '?'} IOMMU)" if m["in_vm_tier"] else "host, in-process"
    )
    kernel = (
        f"simulated Linux {k['version'] // 100}.{k['version'] % 100} (embedded, on host "
        f"{k['host_release']})"
        if k["name"] == "sim"
        else f"Linux {k['host_release']}"
    )
    return (
        f"{kernel}; {where}; {m['cpu']}, {m['cpus']} CPUs, {mem:.1f} GiB; "
        f"fastmap {d['fastmap_version']}, Python {d['python']}; {d['time']}"
    )


def _side(
    header: Sequence[str],
    keys: Sequence[tuple[Any, ...]],
    sim: dict[tuple[Any, ...], Sequence[str]],
    real: dict[tuple[Any, ...], Sequence[str]],
    width: int,
) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    blank = ["-"] * width
    for k in keys:
        cells = [*map(str, k), *sim.get(k, blank), *real.get(k, blank)]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _pinned(sim: dict[str, Any], real: dict[str, Any]) -> list[str]:
    def cells(t: dict[str, Any]) -> dict[tuple[Any, ...], Sequence[str]]:
        return {
            (r["page"], r["method"]): (
                f"{r['entries']:,}",
                _num(r["maps_per_s"]),
                _num(r["over_floor"], ".2f") + "x",
                _num(r["vs_naive"], ".1f") + "x",
                r["backing"],
            )
            for r in t.get("rows", [])
        }

    s, r = cells(sim), cells(real)
    order = {"4KiB": 0, "2MiB": 1, "1GiB": 2}
    keys = sorted(dict.fromkeys([*s, *r]), key=lambda k: order.get(k[0], 3))
    head = ["page", "method"] + [
        f"{k} {c}"
        for k in ("sim", "real")
        for c in ("maps", "maps/s", "vs floor", "vs naive", "memory")
    ]
    notes = [f"- sim: {n}" for n in sim.get("notes", [])[1:]]
    notes += [f"- real: {n}" for n in real.get("notes", [])[1:]]
    return _side(head, keys, s, r, 5) + (["", *notes] if notes else [])


def _map(sim: dict[str, Any], real: dict[str, Any]) -> list[str]:
    def cells(t: dict[str, Any]) -> dict[tuple[Any, ...], Sequence[str]]:
        return {
            (r["size"], r["method"]): (
                f"{r['entries']:,}",
                _num(r["maps_per_s"]),
                _num(r["over_floor"], ".2f") + "x",
            )
            for r in t.get("rows", [])
        }

    s, r = cells(sim), cells(real)
    keys = list(dict.fromkeys([*s, *r]))
    head = ["size", "method"] + [
        f"{k} {c}" for k in ("sim", "real") for c in ("maps", "maps/s", "vs floor")
    ]
    return _side(head, keys, s, r, 3)


_LABELS = {
    "seconds": "time",
    "floor_seconds": "floor",
    "over_floor": "vs floor",
    "maps_per_s": "maps/s",
    "speedup": "vs N=1",
}


def _simple(
    sim: dict[str, Any], real: dict[str, Any], key: Sequence[str], val: Sequence[str]
) -> list[str]:
    def fmt(k: str, v: Any) -> str:
        if isinstance(v, float):
            unit = (sim.get("units") or real.get("units") or {}).get(k, "")
            if unit == "s":
                return f"{v * 1e3:,.2f} ms"
            if unit == "ratio":
                return f"{v:.2f}x"
            return f"{v:,.0f}"
        return "-" if v is None else (f"{v:,}" if isinstance(v, int) else str(v))

    def cells(t: dict[str, Any]) -> dict[tuple[Any, ...], Sequence[str]]:
        return {
            tuple(r[k] for k in key): tuple(fmt(k, r.get(k)) for k in val)
            for r in t.get("rows", [])
        }

    s, r = cells(sim), cells(real)
    keys = list(dict.fromkeys([*s, *r]))
    head = [*key] + [f"{k} {_LABELS.get(c, c)}" for k in ("sim", "real") for c in val]
    return _side(head, keys, s, r, len(val))


def render_report(sim_docs: Sequence[Doc], real_docs: Sequence[Doc], plots: dict[str, str]) -> str:
    sim, real = _tables(sim_docs), _tables(real_docs)
    cmd = list(dict.fromkeys(_command(d) for d in [*sim_docs, *real_docs]))
    lines = [
        "# fastmap benchmarks: the simulator and the real kernel, side by side",
        "",
        "<!-- GENERATED by tools/bench-report.sh (fastmap bench --json into",
        "     docs/benchmarks-data/{sim,real}, then python -m fastmap._tools.bench_report);",
        "     do not edit by hand. -->",
        "",
        f"- **sim**: {_machine(sim_docs[0])}" if sim_docs else "- sim: not run",
        f"- **real**: {_machine(real_docs[0])}" if real_docs else "- real: not run",
        "",
        "The real kernel runs under QEMU's software emulation (TCG) on the same host, so its",
        "absolute rates are those of an emulated CPU (the VM tier's README measures it ~14x",
        "slower than the host on plain Python); the ratios within one kernel (against the",
        "naive loop and the C++ floor, measured in the same run) are what carries over.",
        "The guest runs with emulated VT-d: under virtio-iommu, an IOAS with the edu device",
        "attached reports a single usable IOVA ([0, 0]) on this 6.12 guest, so nothing can be",
        "mapped with that domain.",
        "",
        "Commands (each run on both kernels with the same options):",
        "",
        *[f"    {c}" for c in cmd],
        "",
        "## Map with an IOMMU domain attached (pinning), 4 KiB, 2 MiB and 1 GiB pages",
        "",
        "An edu device attached to the IOAS through VFIO (real: QEMU's emulated Intel VT-d;",
        "sim: a simulated VT-d domain), so every map pins and writes IOPTEs. Mappings cycle",
        "over a small buffer of pages of that size. *naive*: one IOMMU_IOAS_MAP per entry",
        "from Python (ctypes struct); *batch*: `Ioas.map_batch`; *batch-threads*: the same",
        "with `threads=N`; *floor*: a bare C++ loop of IOMMU_IOAS_MAP. *vs floor*: time over",
        "the floor's; *vs naive*: speed-up over the Python loop.",
        "",
        *_pinned(sim.get("pinned", {}), real.get("pinned", {})),
        "",
        "## Map without a domain (bookkeeping and call cost only)",
        "",
        *_map(sim.get("map", {}), real.get("map", {})),
        "",
        "## Whole operations (deferred work included) against their floors",
        "",
        *_simple(
            sim.get("lifecycle", {}),
            real.get("lifecycle", {}),
            ["operation"],
            ["seconds", "floor_seconds", "over_floor"],
        ),
        "",
        *[f"- sim: {n}" for n in sim.get("lifecycle", {}).get("notes", [])],
        *[f"- real: {n}" for n in real.get("lifecycle", {}).get("notes", [])],
        "",
        "## Batch size",
        "",
        *_simple(sim.get("batch", {}), real.get("batch", {}), ["batch", "method"], ["maps_per_s"]),
        "",
        "## threads=N",
        "",
        *_simple(
            sim.get("threads", {}),
            real.get("threads", {}),
            ["target", "threads"],
            ["maps_per_s", "speedup"],
        ),
        "",
        *threads_finding(sim.get("threads", {}), real.get("threads", {})),
        "",
        "## Figures",
        "",
        *[f"![{k}]({v})" for k, v in plots.items()],
        "",
    ]
    return "\n".join(lines)


def threads_finding(sim: dict[str, Any], real: dict[str, Any]) -> list[str]:
    """One sentence per kernel and target: the best speed-up any N > 1 gave."""
    out = []
    for name, t in (("sim", sim), ("real", real)):
        by: dict[str, list[tuple[int, float]]] = {}
        for r in t.get("rows", []):
            if r["threads"] > 1:
                by.setdefault(r["target"], []).append((r["threads"], r["speedup"]))
        for target, vals in by.items():
            n, best = max(vals, key=lambda x: x[1])
            verdict = "helps" if best >= 1.1 else "does not help"
            out.append(f"- {name}, {target}: best N={n} at {best:.2f}x one thread: {verdict}.")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    sim_dir, real_dir, out = Path(args[0]), Path(args[1]), Path(args[2])
    sim_docs, real_docs = load(sim_dir), load(real_dir)
    plots: dict[str, str] = {}
    from fastmap._tools import bench_plot

    for name, docs in (("sim", sim_docs), ("real", real_docs)):
        tables = [
            Table(t["bench"], t["title"], [], t["rows"], t["notes"]) for t in _tables(docs).values()
        ]
        if docs and any(t.bench in bench_plot.PANELS for t in tables):
            png = out.parent / f"benchmarks-{name}.png"
            bench_plot.plot(tables, name, str(png))
            plots[f"{name} kernel"] = png.name
    out.write_text(render_report(sim_docs, real_docs, plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
