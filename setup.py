"""Build of fastmap's native parts, all from the one C++ core in csrc/:

- fastmap._core: the Python extension (every .cc under csrc/ but the C library's and the
  interposer's own folders);
- fastmap/libfastmap_sim.so: the simulated kernel as a C library (csrc/sim + csrc/capi_sim),
  no Python in it;
- fastmap/libfastmap_preload.so: `fastmap sim-run`'s LD_PRELOAD interposer (csrc/preload),
  linked against libfastmap_sim.so.
"""

from __future__ import annotations

import os
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ParallelCompile("FASTMAP_BUILD_JOBS", default=os.cpu_count() or 1).install()

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"
C_ONLY = ("capi_sim", "preload")  # folders that only the plain C libraries build


def sources(*folders: str) -> list[str]:
    found = (
        (p for f in folders for p in (CSRC / f).rglob("*.cc")) if folders else CSRC.rglob("*.cc")
    )
    return sorted(
        str(p.relative_to(ROOT))
        for p in found
        if folders or p.relative_to(CSRC).parts[0] not in C_ONLY
    )


# setuptools only rebuilds when a listed file is newer than the extension: list the headers.
HEADERS = sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*.h"))
HEADERS += ["src/fastmap/fastmap_sim.h"]
WARN = ["-Wall", "-Wextra", "-Werror", "-O2", "-fvisibility=hidden"]

core = Pybind11Extension(
    "fastmap._core",
    sources(),
    depends=HEADERS,
    include_dirs=["csrc", "src/fastmap"],
    cxx_std=20,
    extra_compile_args=WARN,
)
SIM_LIB = "fastmap.libfastmap_sim"
sim_lib = Extension(
    SIM_LIB,
    sources("sim", "capi_sim"),
    depends=HEADERS,
    include_dirs=["csrc", "src/fastmap"],
    language="c++",
    extra_compile_args=["-std=c++20", *WARN],
    extra_link_args=["-Wl,-soname,libfastmap_sim.so", "-Wl,--no-undefined"],
)
preload = Extension(
    "fastmap.libfastmap_preload",
    sources("preload"),
    depends=HEADERS,
    include_dirs=["csrc", "src/fastmap"],
    language="c++",
    libraries=["fastmap_sim", "dl", "pthread"],
    runtime_library_dirs=["$ORIGIN"],
    extra_compile_args=["-std=c++20", *WARN],
    extra_link_args=["-Wl,--no-undefined"],
)
PLAIN = {n.rsplit(".", 1)[1] for n in (SIM_LIB, preload.name)}


class BuildExt(build_ext):  # type: ignore[misc]
    """Plain shared libraries are named lib*.so (no Python ABI tag) and the interposer
    links against the simulator library built just before it."""

    def get_ext_filename(self, fullname: str) -> str:
        *pkg, name = fullname.split(".")
        if name in PLAIN:
            return os.path.join(*pkg, name + ".so")
        return str(super().get_ext_filename(fullname))

    def build_extension(self, ext: Extension) -> None:
        if ext.name == preload.name:
            ext.library_dirs = [os.path.dirname(self.get_ext_fullpath(SIM_LIB))]
        super().build_extension(ext)


CAPI_HEADER = ROOT / "csrc" / "capi" / "fastmap_capi.h"


class BuildPy(build_py):
    """Install the C API header (it lives in csrc/capi) as package data of fastmap. An
    editable install gets a copy in the package source directory, like the extension
    itself (generated, ignored by git)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            target = ROOT / "src" / "fastmap"
        else:
            target = Path(self.build_lib) / "fastmap"
        target.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(CAPI_HEADER), str(target / CAPI_HEADER.name))


setup(
    ext_modules=[core, sim_lib, preload],
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
