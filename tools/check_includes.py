#!/usr/bin/env python3
"""Check the folder-level include graph of csrc/ against the declared layers.

Every `#include "..."` in csrc/ is resolved the way the build resolves it (the include
directories of setup.py) and reduced to an edge between folders (csrc/sim/iommufd/x.cc ->
sim/iommufd). The check fails, naming the offending files, when

- the folder graph has a cycle;
- a folder includes one that its layer may not depend on (LAYERS below);
- a folder is not declared, or a quoted include does not resolve.

Run from anywhere: `python3 tools/check_includes.py` (exit status 1 on a finding).
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
# The build's include directories (setup.py), in search order; headers found outside
# csrc/ belong to the folder named here.
EXTERNAL_ROOTS = {ROOT / "src" / "fastmap": "capi"}

# Each folder and the folders it may include, lowest layer first. The simulator is layered
# like the kernel: core (files, fd table, user memory, config), then the IOMMU model, then
# iommufd, then VFIO (which binds to iommufd), then the kernel that plugs them together.
LAYERS: dict[str, frozenset[str]] = {
    "uapi": frozenset(),
    "seam": frozenset(),
    "engine": frozenset({"uapi", "seam"}),
    "capi": frozenset({"engine", "uapi", "seam"}),
    "sim/core": frozenset({"seam"}),
    "sim/iommu": frozenset({"sim/core", "uapi"}),
    "sim/iommufd": frozenset({"sim/iommu", "sim/core", "uapi", "seam"}),
    "sim/vfio": frozenset({"sim/iommufd", "sim/iommu", "sim/core", "uapi", "seam"}),
    "sim": frozenset({"sim/vfio", "sim/iommufd", "sim/iommu", "sim/core", "uapi", "seam"}),
    # The simulator as a C library (its header, fastmap_sim.h, is in src/fastmap: "capi"),
    # and sim-run's interposer, which sees the simulator only through that header (and the
    # uAPI definitions, to name and decode the calls it traces).
    "capi_sim": frozenset(
        {"capi", "sim", "sim/vfio", "sim/iommufd", "sim/iommu", "sim/core", "uapi", "seam"}
    ),
    "preload": frozenset({"capi", "uapi"}),
    "bindings": frozenset(
        {
            "capi",
            "engine",
            "seam",
            "uapi",
            "sim",
            "sim/vfio",
            "sim/iommufd",
            "sim/iommu",
            "sim/core",
        }
    ),
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)
SOURCE_SUFFIXES = {".h", ".cc"}


def folder_of(csrc: Path, path: Path) -> str:
    """The layer folder of a file: its directory relative to its include root."""
    for root, name in EXTERNAL_ROOTS.items():
        if path.is_relative_to(root):
            return name
    return path.parent.relative_to(csrc).as_posix()


def resolve(csrc: Path, including: Path, spec: str) -> Path | None:
    """Where the compiler finds `#include "spec"`: beside the includer, then the roots."""
    for base in (including.parent, csrc, *EXTERNAL_ROOTS):
        candidate = base / spec
        if candidate.is_file():
            return candidate.resolve()
    return None


def edges(csrc: Path) -> tuple[dict[tuple[str, str], list[str]], list[str]]:
    """Folder edges (with the include lines that make them) and unresolved includes."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    unresolved: list[str] = []
    for path in sorted(p.resolve() for p in csrc.rglob("*")):
        if path.suffix not in SOURCE_SUFFIXES or not path.is_file():
            continue
        src = folder_of(csrc, path)
        for spec in INCLUDE.findall(path.read_text()):
            target = resolve(csrc, path, spec)
            where = f'{path.relative_to(csrc.parent)}: #include "{spec}"'
            if target is None:
                unresolved.append(where)
                continue
            dst = folder_of(csrc, target)
            if dst != src:
                found[(src, dst)].append(where)
    return found, unresolved


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one folder (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def problems(csrc: Path = CSRC) -> list[str]:
    """Every finding, one line each (empty: the include graph is layered)."""
    csrc = csrc.resolve()
    found, unresolved = edges(csrc)
    report = [f"unresolved include: {u}" for u in unresolved]
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst in found:
        graph[src].add(dst)
    for component in cycles(graph):
        report.append("include cycle between folders: " + " <-> ".join(component))
        for (src, dst), where in sorted(found.items()):
            if src in component and dst in component:
                report.extend(f"    {w}" for w in where)
    folders = {folder_of(csrc, p) for p in csrc.rglob("*") if p.suffix in SOURCE_SUFFIXES}
    for folder in sorted(folders - LAYERS.keys()):
        report.append(f"folder {folder} is not declared in tools/check_includes.py LAYERS")
    for (src, dst), where in sorted(found.items()):
        allowed = LAYERS.get(src)
        if allowed is not None and dst not in allowed:
            report.append(f"layer violation: {src} may not include {dst}")
            report.extend(f"    {w}" for w in where)
    return report


def main() -> int:
    report = problems()
    for line in report:
        print(line, file=sys.stderr)
    return 1 if report else 0


if __name__ == "__main__":
    sys.exit(main())
