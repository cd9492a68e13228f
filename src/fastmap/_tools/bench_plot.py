"""`fastmap bench --plot FILE.png`: the benchmark tables as figures (matplotlib, the `plot`
extra: ``pip install 'fastmap[plot]'``).

One PNG with a panel per figure the run has data for, each fastmap series beside the
baselines measured in the same run:

- map throughput against mapping size (no domain, and with a domain attached);
- map throughput against batch size (map_batch and the C++ floor per call, the naive loop);
- map_batch(threads=N) speed-up;
- harvest rate against dirty fraction, and against tracked size (beside the walk alone);
- bitmap -> ranges rate (fastmap, count_floor, numpy, Python loop).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

from fastmap._tools.bench_table import Table

__all__ = ["PlotUnavailableError", "plot", "require"]


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def require() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise PlotUnavailableError(
            "--plot needs matplotlib: pip install 'fastmap[plot]' (or matplotlib)"
        )


Panel = Callable[[Any, Table], None]


def _by(rows: Sequence[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out


def _lines(
    ax: Any, rows: Sequence[dict[str, Any]], series: str, x: str, y: str, at: Sequence[Any] = ()
) -> None:
    """One line of `y` against `x` for each value of `series`. With `at`, every line is drawn
    over those x values (a category axis, in that order), with a gap where it has none."""
    for label, rs in _by(rows, series).items():
        if at:
            value = {r[x]: r[y] for r in rs}
            ax.plot(at, [value.get(v) for v in at], marker="o", label=label)
        else:
            ax.plot([r[x] for r in rs], [r[y] for r in rs], marker="o", label=label)


def _log_log(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xscale="log", yscale="log")


def _map_sizes(ax: Any, t: Table) -> None:
    sizes = list(dict.fromkeys(r["size"] for r in t.rows))
    _lines(ax, t.rows, "method", "size", "maps_per_s", at=sizes)
    ax.set(title="map, no domain: maps/s vs mapping size", ylabel="maps/s", yscale="log")


def _pinned(ax: Any, t: Table) -> None:
    order = {"4KiB": 0, "2MiB": 1, "1GiB": 2}
    pages = sorted(dict.fromkeys(r["page"] for r in t.rows), key=lambda p: order.get(p, 3))
    _lines(ax, t.rows, "method", "page", "maps_per_s", at=pages)
    ax.set(title="map with a domain (pinning): maps/s vs page size", ylabel="maps/s", yscale="log")


def _batch(ax: Any, t: Table) -> None:
    _lines(ax, t.rows, "method", "batch", "maps_per_s")
    _log_log(ax, "maps/s vs batch size (4 KiB, no domain)", "entries per call", "maps/s")


def _threads(ax: Any, t: Table) -> None:
    _lines(ax, t.rows, "target", "threads", "speedup")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set(title="threads=N: speed vs one thread", xlabel="threads", ylabel="x one thread")


def _harvest_density(ax: Any, t: Table) -> None:
    rows = [r for r in t.rows if r["group"].startswith("harvest") and "IOASes" not in r["group"]]
    dirty = [r for r in rows if "baseline" not in r["name"]]
    clean = [r for r in rows if "baseline" in r["name"]]
    pct = [float(r["name"].split("%")[0]) for r in dirty]
    ax.plot(pct, [r["gib_per_s"] for r in dirty], marker="o", label="DirtyHarvester")
    ax.plot(pct, [r["gib_per_s"] for r in clean], marker="o", label="nothing dirty (walk)")
    _log_log(ax, "harvest rate vs dirty fraction", "% of pages dirty", "GiB of guest memory/s")


def _harvest_size(ax: Any, t: Table) -> None:
    rows = [r for r in t.rows if "IOASes" in r["group"]]
    dirty = [r for r in rows if "baseline" not in r["name"]]
    ax.plot(
        [r["guest_bytes"] / 2**30 for r in dirty],
        [r["gib_per_s"] for r in dirty],
        marker="o",
        label="DirtyHarvester, 1% dirty",
    )
    for r in rows:
        if "baseline" in r["name"]:
            ax.plot(
                [r["guest_bytes"] / 2**30],
                [r["gib_per_s"]],
                marker="s",
                ls="",
                label="nothing dirty (walk)",
            )
    _log_log(ax, "harvest rate vs tracked size", "GiB tracked", "GiB of guest memory/s")


def _to_ranges(ax: Any, t: Table) -> None:
    rows = [r for r in t.rows if r["group"].startswith("to_ranges")]
    groups = list(dict.fromkeys(r["group"].removeprefix("to_ranges ") for r in rows))
    for name, rs in _by(rows, "name").items():
        ax.plot(groups, [r["gib_per_s"] for r in rs], marker="o", label=name.split(" (")[0])
    ax.set(title="bitmap -> dirty ranges", ylabel="GiB of guest memory/s", yscale="log")


PANELS: dict[str, list[Panel]] = {
    "map": [_map_sizes],
    "pinned": [_pinned],
    "batch": [_batch],
    "threads": [_threads],
    "dirty": [_harvest_density, _harvest_size, _to_ranges],
}


def plot(tables: Sequence[Table], kernel: str, path: str) -> int:
    """Writes the figure of `tables` to `path`; returns how many panels it has."""
    require()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = [(fn, t) for t in tables for fn in PANELS.get(t.bench, [])]
    if not jobs:
        jobs_text = ", ".join(t.bench for t in tables) or "nothing"
        raise ValueError(
            f"nothing to plot: {jobs_text} has no figure (map, pinned, batch, threads and dirty do)"
        )
    cols = min(2, len(jobs))
    nrows = -(-len(jobs) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.4 * cols, 4.2 * nrows), squeeze=False)
    for ax, (fn, t) in zip(axes.flat, jobs, strict=False):
        fn(ax, t)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(jobs) :]:
        ax.set_visible(False)
    fig.suptitle(f"fastmap benchmarks, {kernel} kernel")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return len(jobs)
