"""Build of fastmap._core: every .cc under csrc/ is one C++20 extension."""

from __future__ import annotations

import os
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup
from setuptools.command.build_py import build_py

ParallelCompile("FASTMAP_BUILD_JOBS", default=os.cpu_count() or 1).install()

ROOT = Path(__file__).parent
SOURCES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cc"))
# setuptools only rebuilds when a listed file is newer than the extension: list the headers.
HEADERS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.h"))

core = Pybind11Extension(
    "fastmap._core",
    SOURCES,
    depends=HEADERS,
    include_dirs=["csrc"],
    cxx_std=20,
    extra_compile_args=["-Wall", "-Wextra", "-Werror", "-O2", "-fvisibility=hidden"],
)

CAPI_HEADER = ROOT / "csrc" / "capi" / "fastmap_capi.h"


class BuildPy(build_py):
    """Install the C API header (it lives in csrc/capi) as package data of fastmap."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "fastmap"
        target.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(CAPI_HEADER), str(target / CAPI_HEADER.name))


setup(ext_modules=[core], cmdclass={"build_ext": build_ext, "build_py": BuildPy})
