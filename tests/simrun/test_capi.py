"""libfastmap_sim from C, without Python, and the same simulator seen from Python and
through sim-run: one core, one behaviour."""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fastmap import get_include, simrun
from tests.conformance.raw import Iommufd
from tests.simrun.conftest import PROGS, ROOT, expect_ok, sim_run

pytestmark = pytest.mark.not_under_sanitizer(
    reason="sim-run's interposer and libfastmap_sim.so are not rebuilt with the sanitizer"
)


def _python_answers() -> str:
    """The example's sequence on the Python binding of the simulator."""
    k = Iommufd(kernel_version=612)
    ioas = k.ioas()
    rc, _stdev, hwpt, _idev = k.mock_domain(ioas)
    assert rc == 0
    buf = mmap.mmap(-1, 1 << 20)
    va = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    rc, iova = k.map(ioas, va, 1 << 20)
    assert rc == 0
    return f"ioas={ioas} hwpt={hwpt} iova={iova:#x}"


def test_c_library_without_python(cc: Callable[..., Path]) -> None:
    lib = str(simrun.lib_dir())
    exe = cc(
        PROGS / "capi.c", f"-I{get_include()}", f"-L{lib}", "-lfastmap_sim", f"-Wl,-rpath,{lib}"
    )
    # No Python in the process: the library stands alone.
    needed = subprocess.run(["ldd", str(simrun.sim_library())], capture_output=True, text=True)
    assert "python" not in needed.stdout
    out = subprocess.run([str(exe)], capture_output=True, text=True, env={"PATH": os.defpath})
    line = expect_ok(out).strip()
    assert line == _python_answers() + f" bad=-{14}"  # EFAULT for the bad pointer


def test_example_matches_python_binding(cc: Callable[..., Path]) -> None:
    exe = cc(ROOT / "examples" / "iommufd_map.c")
    out = expect_ok(sim_run([str(exe)]))
    ioas, hwpt, iova = (
        out.split("ioas ")[1].split(",")[0],
        out.split("mock hwpt ")[1].split(",")[0],
        out.split("iova ")[1].split(" ")[0],
    )
    assert f"ioas={ioas} hwpt={hwpt} iova={iova}" == _python_answers()
