"""Print the C++ sources of fastmap._core as setup.py lists them, one per line.

--no-bindings leaves out the pybind11 layer (csrc/bindings/), for the C++ drivers under
tests/cpp that link the engine and the simulator without Python. Reading the list from
setup.py itself keeps the sanitizer builds in step with the extension's real source list.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

import setuptools


def extension_sources() -> list[str]:
    captured: dict[str, Any] = {}

    def fake_setup(**kwargs: Any) -> None:
        captured.update(kwargs)

    setuptools.setup = fake_setup
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    runpy.run_path(str(root / "setup.py"), run_name="__fastmap_sources__")
    # Only the Python extension: the C library and the interposer are built from the same
    # core sources by setup.py, and the interposer must never be linked into the extension.
    (core,) = (ext for ext in captured["ext_modules"] if ext.name == "fastmap._core")
    return [str(s) for s in core.sources]


if __name__ == "__main__":
    sources = extension_sources()
    if "--no-bindings" in sys.argv[1:]:
        sources = [s for s in sources if not s.startswith("csrc/bindings/")]
    print("\n".join(sources))
