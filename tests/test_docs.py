"""The guides in docs/ stay true: the error guide is generated from fastmap.errors and the
errno census (tools/gen_error_guide.py), and the user guide's code runs."""

from __future__ import annotations

import json
import re
from types import ModuleType

from fastmap.errors import KernelError
from tests.script_module import ROOT, load_script


def _generator() -> ModuleType:
    return load_script(ROOT / "tools" / "gen_error_guide.py", "gen_error_guide")


def _rows(text: str) -> set[tuple[str, str, str]]:
    """(call, errno, class) of every row of the guide's "By call" tables."""
    rows = set()
    for section in text.split("\n### ")[1:]:
        call = section.split("\n", 1)[0]
        for errno_name, cls in re.findall(r"^\| (E[A-Z0-9]+) \| `(\w+)` \|", section, re.M):
            rows.add((call, errno_name, cls))
    return rows


def test_error_guide_is_generated_from_the_code() -> None:
    """Every call, errno and class the generator finds is in docs/errors.md, and no other.
    (The hint texts are compared by `tools/gen_error_guide.py --check`: after changing a hint
    in src/fastmap/errors.py, run `.venv/bin/python tools/gen_error_guide.py`.)"""
    generated = _generator().render()
    assert _rows((ROOT / "docs" / "errors.md").read_text()) == _rows(generated)
    assert len(_rows(generated)) > 50


def test_error_guide_rows_name_the_class_fastmap_raises() -> None:
    text = (ROOT / "docs" / "errors.md").read_text()
    census = json.loads((ROOT / "docs" / "errors-census.json").read_text())
    assert len(census) > 20
    for row in census:
        cls = type(KernelError.from_errno(row["errno"], row["call"])).__name__
        section = text.split(f"\n### {row['call']}\n", 1)[1].split("\n### ", 1)[0]
        assert re.search(rf"\| `{cls}` \|", section), (row, cls)


def test_guide_allocator_example_runs() -> None:
    """docs/guide.md §4 as written."""
    guide = (ROOT / "docs" / "guide.md").read_text()
    block = (
        guide.split("## 4. The IOVA allocator", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    )
    namespace: dict[str, object] = {"va": 0x7F00_0020_0000}
    exec(compile(block, "guide.md §4", "exec"), namespace)
    assert namespace["iova"] % (2 << 20) == 0x7F00_0020_0000 % (2 << 20)


def _python_block(section: str) -> str:
    guide = (ROOT / "docs" / "guide.md").read_text()
    return guide.split(section, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_guide_ioas_and_batch_examples_run() -> None:
    """docs/guide.md §2 as written (on the simulator), and §3 on an IOAS of its own."""
    import numpy as np

    from fastmap import IOMMUFDBackend

    exec(compile(_python_block("## 2. I/O address spaces"), "guide.md §2", "exec"), {})
    with IOMMUFDBackend(kernel="sim") as be, be.ioas() as ioas:
        namespace: dict[str, object] = {"np": np, "ioas": ioas}
        exec(compile(_python_block("## 3. Batches"), "guide.md §3", "exec"), namespace)
        assert len(namespace["iovas"]) == 256  # type: ignore[arg-type]
        exec(compile(_python_block("## 6. DMA memory"), "guide.md §6", "exec"), namespace)
        assert namespace["iova"] is not None
