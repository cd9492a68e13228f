"""fastmap's C-level API from Cython: a small driver module is compiled against
fastmap/capi.pxd and fastmap_capi.h, and its GIL-free loops must agree with the Python view
of the same IOAS (segments, translations, errnos)."""

from __future__ import annotations

import errno
import importlib.util
import mmap
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import fastmap
from fastmap.ioas import Ioas
from fastmap.kernel import Kernel

HERE = Path(__file__).parent / "cython"
PAGE = mmap.PAGESIZE
BASE = 1 << 33


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    pytest.importorskip("Cython")
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    build = tmp_path_factory.mktemp("capi")
    shutil.copy(HERE / "capi_driver.pyx", build)
    ext = Extension(
        "capi_driver",
        [str(build / "capi_driver.pyx")],
        include_dirs=[fastmap.get_include()],
    )
    # `from fastmap cimport capi` resolves in the directory above the package.
    pxd_root = str(Path(fastmap.get_include()).parent)
    dist = Distribution({"ext_modules": cythonize([ext], include_path=[pxd_root], quiet=True)})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib = str(build)
    cmd.build_temp = str(build / "tmp")
    cmd.ensure_finalized()
    cmd.run()
    so = next(build.glob("capi_driver*.so"))
    spec = importlib.util.spec_from_file_location("capi_driver", so)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["capi_driver"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ioas(kernel: Kernel) -> Iterator[Ioas]:
    fd = kernel.open("/dev/iommu")
    with Ioas.allocate(kernel, fd) as io:
        yield io
    kernel.close(fd)


def test_cython_maps_what_python_sees(driver: ModuleType, ioas: Ioas) -> None:
    mem = np.frombuffer(mmap.mmap(-1, 32 * PAGE), np.uint8)
    va = mem.ctypes.data
    assert driver.map_pages(ioas, va, BASE, 32, PAGE) == 0
    segs = [(s.iova, s.va, s.length) for s in ioas.segments()]
    assert segs == [(BASE + i * PAGE, va + i * PAGE, PAGE) for i in range(32)]
    # Translations through the C API equal the Python API's, and miss where nothing is.
    got = driver.translate_all(ioas, BASE - PAGE, 34, PAGE)
    assert got == [None] + [va + i * PAGE for i in range(32)] + [None]
    assert got[1:-1] == [ioas.translate_iova(BASE + i * PAGE) for i in range(32)]
    # A second map over the same IOVAs fails in the kernel, with its errno.
    assert driver.map_pages(ioas, va, BASE, 1, PAGE) == -errno.EEXIST
    ioas.unmap(BASE, 32 * PAGE)
    assert len(ioas) == 0


def test_cython_auto_iova_translate_unmap(driver: ModuleType, ioas: Ioas) -> None:
    mem = np.frombuffer(mmap.mmap(-1, 4 * PAGE), np.uint8)
    va = mem.ctypes.data
    iova, back, rc_map, rc_tr, rc_unmap, rc_again = driver.auto_map_and_back(ioas, va, 4 * PAGE)
    assert (rc_map, rc_tr, rc_unmap) == (0, 0, 0)
    assert back == iova and iova % PAGE == 0
    assert rc_again == -errno.ENOENT
    assert len(ioas) == 0
