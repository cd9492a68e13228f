"""Build of fastmap._core: every .cc under csrc/ is one C++20 extension."""

from __future__ import annotations

import os
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ParallelCompile("FASTMAP_BUILD_JOBS", default=os.cpu_count() or 1).install()

ROOT = Path(__file__).parent
SOURCES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cc"))
# setuptools only rebuilds when a listed file is newer than the extension: list the headers.
HEADERS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.h"))
HEADERS.append("src/fastmap/fastmap_capi.h")

core = Pybind11Extension(
    "fastmap._core",
    SOURCES,
    depends=HEADERS,
    include_dirs=["csrc", "src/fastmap"],
    cxx_std=20,
    extra_compile_args=["-Wall", "-Wextra", "-Werror", "-O2", "-fvisibility=hidden"],
)

setup(ext_modules=[core], cmdclass={"build_ext": build_ext})
