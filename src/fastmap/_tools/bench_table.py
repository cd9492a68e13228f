"""Benchmark results as data: a `Table` of typed rows, printed within 100 columns or saved
as JSON with the unit of every field (`fastmap bench --json`).

The bench modules measure; the CLI turns their rows into `Table`s here, so that the text
table, the JSON file and the plots all read the same numbers.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WIDTH", "Column", "Table", "render", "text_table"]

#: Tables are laid out to fit a terminal this wide.
WIDTH = 100


@dataclass(frozen=True)
class Column:
    """One field of a row: its key, its unit (in the JSON) and how the text table shows it."""

    key: str
    unit: str = ""  # "s", "maps/s", "GiB/s", "bytes", "count", "ratio", "" for text
    header: str = ""
    fmt: Callable[[Any], str] = str
    hidden: bool = False  # in the JSON (with its unit) but not in the text table

    @property
    def title(self) -> str:
        return self.header or self.key


@dataclass
class Table:
    """One benchmark's rows (dicts keyed by column key, values in the columns' units)."""

    bench: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Rows are printed under a heading line per distinct value of this key (not a column).
    group_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "title": self.title,
            "units": {c.key: c.unit for c in self.columns},
            "rows": [{k: _json_value(v) for k, v in r.items()} for r in self.rows],
            "notes": list(self.notes),
        }


def _json_value(v: Any) -> Any:
    # JSON has no infinity or nan: a rate over a zero time is reported as null.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def text_table(headers: Sequence[str], cells: Sequence[Sequence[str]], width: int = WIDTH) -> str:
    """Right-aligned columns; when too wide, the widest text columns wrap onto more lines."""
    grid = [[str(h) for h in headers]] + [[str(c) for c in r] for r in cells]
    n = len(headers)
    widths = [max(len(row[i]) for row in grid) for i in range(n)]
    sep = 2
    while sum(widths) + sep * (n - 1) > width:
        i = max(range(n), key=lambda j: widths[j])
        longest_word = max(len(w) for row in grid for w in (row[i].split() or [""]))
        excess = sum(widths) + sep * (n - 1) - width
        new = max(longest_word, widths[i] - excess, 8)
        if new >= widths[i]:
            break  # nothing left to wrap: a single word is wider than the room
        widths[i] = new
    lines = []
    for ri, row in enumerate(grid):
        parts = [textwrap.wrap(c, widths[i]) or [""] for i, c in enumerate(row)]
        for k in range(max(len(p) for p in parts)):
            cells_k = [(p[k] if k < len(p) else "") for p in parts]
            lines.append(
                (" " * sep).join(c.rjust(w) for c, w in zip(cells_k, widths, strict=True)).rstrip()
            )
        if ri == 0:
            lines.append((" " * sep).join("-" * w for w in widths))
    return "\n".join(lines)


def render(table: Table, width: int = WIDTH) -> str:
    """The table as text: title, rows (under group headings), notes; no line over `width`."""
    out = textwrap.wrap(table.title, width)
    cols = [c for c in table.columns if not c.hidden]
    groups: dict[object, list[dict[str, Any]]] = {}
    for r in table.rows:
        groups.setdefault(r.get(table.group_by) if table.group_by else None, []).append(r)
    for g, rows in groups.items():
        if table.group_by:
            out.append("")
            out += textwrap.wrap(str(g), width)
        cells = [[c.fmt(r[c.key]) if r.get(c.key) is not None else "-" for c in cols] for r in rows]
        out.append(text_table([c.title for c in cols], cells, width))
    for note in table.notes:
        out += textwrap.wrap(note, width, subsequent_indent="  ")
    return "\n".join(out)
