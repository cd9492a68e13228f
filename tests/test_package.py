"""The package's shape: no module-level import cycle in src/fastmap, and `fastmap.__all__`
names what `import fastmap` really gives.

Imports are read with `ast`, not by importing: only statements that run when the module is
imported count (module body, and `if`/`try`/`with` blocks at module level). Imports inside
functions run later, and those under `if TYPE_CHECKING:` never run, so neither can make a
cycle at import time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import fastmap

pytestmark = pytest.mark.not_under_sanitizer(
    reason="it reads the source tree, which the sanitizer build's link farm lacks"
)

SRC = Path(fastmap.__file__).parent


def _module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_statements(
    body: list[ast.stmt], functions: bool = False
) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported (and, with `functions`, those that
    run when its functions are called); never those under `if TYPE_CHECKING:`."""
    for stmt in body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            yield stmt
        elif isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from _import_statements(stmt.body, functions)
            yield from _import_statements(stmt.orelse, functions)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, stmt.orelse, stmt.finalbody):
                yield from _import_statements(block, functions)
            for handler in stmt.handlers:
                yield from _import_statements(handler.body, functions)
        elif isinstance(stmt, ast.For | ast.While):
            yield from _import_statements(stmt.body + stmt.orelse, functions)
        elif isinstance(stmt, ast.With | ast.ClassDef) or (
            functions and isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef)
        ):
            yield from _import_statements(stmt.body, functions)


def import_graph(root: Path, functions: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports when it is imported (with `functions`:
    or when its functions run)."""
    files = {_module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    # Extension modules (fastmap._core) are modules too, with no imports of the package's.
    extensions = {
        _module_name(root, p.with_name(p.name.split(".")[0] + ".py"))
        for pattern in ("*.so", "*.pyi")
        for p in root.rglob(pattern)
    }
    modules = set(files) | extensions
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for stmt in _import_statements(ast.parse(path.read_text()).body, functions):
            if isinstance(stmt, ast.Import):
                edges.update(a.name for a in stmt.names if a.name in modules)
                continue
            base = stmt.module or ""
            if stmt.level:
                anchor = package.split(".")[: len(package.split(".")) - (stmt.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in stmt.names:
                # `from pkg import sub` imports the submodule; `from pkg import Name` runs
                # pkg/__init__.py (which is where a cycle through re-exports would be).
                sub = f"{base}.{alias.name}"
                edges.add(sub if sub in modules else base)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as [a, b, ..., a], or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_stack:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            found = visit(node)
            if found:
                return found
    return None


def test_no_module_level_import_cycle() -> None:
    graph = import_graph(SRC)
    assert "fastmap.lifecycle.device" in graph  # the walk really reached the subpackages
    assert find_cycle(graph) is None


def test_imports_go_one_way_even_inside_functions() -> None:
    """A deferred import inside a function hides a cycle rather than removing it (kernel and
    sim used to import each other that way); only annotation-only imports may point back."""
    graph = import_graph(SRC, functions=True)
    assert "fastmap.lifecycle.vfio_iommufd" in graph["fastmap.lifecycle.device"]
    assert find_cycle(graph) is None


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "a.py": "from pkg.sub import b\n",
            "sub/__init__.py": "",
            "sub/b.py": "from .. import c\n",
            "c.py": "import pkg.a\n",
        },
    )
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]


def test_cycle_check_finds_a_cycle_through_reexports(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path / "pkg",
        {
            "__init__.py": "from pkg.a import A\n",
            "a.py": "from pkg import b\nA = 1\n",
            "b.py": "",
        },
    )
    assert find_cycle(import_graph(pkg)) is None  # `b` is a submodule: __init__ is not rerun
    (pkg / "a.py").write_text("from pkg import B\nA = 1\n")
    assert find_cycle(import_graph(pkg)) == ["pkg", "pkg.a", "pkg"]


def test_cycle_check_ignores_function_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "a.py": "import pkg.b\n",
            "b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg import a\n"
                "def f():\n    from pkg import a\n"
            ),
        },
    )
    assert find_cycle(import_graph(pkg)) is None
    assert find_cycle(import_graph(pkg, functions=True)) == ["pkg.a", "pkg.b", "pkg.a"]


def test_all_names_exist() -> None:
    assert fastmap.__all__, "fastmap.__all__ is empty"
    assert len(set(fastmap.__all__)) == len(fastmap.__all__)
    missing = [n for n in fastmap.__all__ if not hasattr(fastmap, n)]
    assert missing == []


@pytest.mark.parametrize("name", sorted(fastmap.__all__))
def test_all_names_are_documented(name: str) -> None:
    obj = getattr(fastmap, name)
    if not isinstance(obj, str):
        assert (obj.__doc__ or "").strip(), f"fastmap.{name} has no docstring"


def test_every_error_is_a_fastmap_error() -> None:
    """One hierarchy: whatever the public modules raise on purpose can be caught as
    FastmapError (private ones, e.g. _layout's check of the build itself, are exempt)."""
    import importlib
    import inspect

    found = []
    for name in sorted(import_graph(SRC)):
        if any(part.startswith("_") for part in name.split(".")):
            continue
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            is_error = issubclass(cls, Exception) and not issubclass(cls, Warning)
            if cls.__module__ == name and is_error:
                found.append(cls)
    assert fastmap.errors.KernelError in found and fastmap.errors.AllocatorError in found
    assert [c for c in found if not issubclass(c, fastmap.FastmapError)] == []


def _documented_order() -> list[str]:
    """The module order of docs/architecture.md's import list, as module names."""
    doc = (SRC.parent.parent / "docs" / "architecture.md").read_text()
    intro = doc.index("modules import in one direction")
    start = doc.index("```\n", intro) + 4
    block = doc[start : doc.index("\n```", start)]
    names: list[str] = []
    for line in block.splitlines():
        items = line[12:] if line[:1] != " " else line.strip()
        names += [f"fastmap.{n.strip()}" for n in items.split(",") if n.strip()]
    return [n.replace("fastmap.fastmap", "fastmap") for n in names]


def _violations(order: list[str], graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Modules missing from `order` or not in the package, and imports pointing down it."""
    rank: dict[str, int] = {}
    groups: set[int] = set()  # ranks shared by a private group, whose modules may use each other
    for i, name in enumerate(order):
        if name.endswith(".*"):
            group = name[:-2]
            rank.update({m: i for m in graph if m == group or m.startswith(group + ".")})
            groups.add(i)
        else:
            rank[name] = i
    bad = [(m, "not in the doc") for m in sorted(set(graph) - set(rank))]
    bad += [(m, "no such module") for m in sorted(set(rank) - set(graph) - {"fastmap._core"})]
    bad += sorted(
        (m, d)
        for m, deps in graph.items()
        for d in deps
        if d in rank
        and m in rank
        and (rank[d] > rank[m] or (rank[d] == rank[m] and rank[m] not in groups))
    )
    return bad


def test_architecture_doc_lists_the_import_order() -> None:
    assert _violations(_documented_order(), import_graph(SRC, functions=True)) == []


def test_doc_order_check_can_fail() -> None:
    order = _documented_order()
    graph = import_graph(SRC, functions=True)
    i, j = order.index("fastmap.kernel"), order.index("fastmap.sim")
    order[i], order[j] = order[j], order[i]
    assert ("fastmap.sim", "fastmap.kernel") in _violations(order, graph)
    assert ("fastmap.ioas", "not in the doc") in _violations(
        [n for n in order if n != "fastmap.ioas"], graph
    )
