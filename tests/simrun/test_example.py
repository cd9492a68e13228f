"""examples/iommufd_map.c, unmodified, on both kernels: under `fastmap sim-run` here, and
directly on Linux 6.12 in the VM tier (the "real" variant; needs /dev/iommu with
CONFIG_IOMMUFD_TEST)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.simrun.conftest import ROOT, expect_ok, sim_run

pytestmark = pytest.mark.not_under_sanitizer(
    reason="sim-run's interposer and libfastmap_sim.so are not rebuilt with the sanitizer"
)

EXAMPLE = ROOT / "examples" / "iommufd_map.c"


@pytest.mark.parametrize("transport", ["sim", pytest.param("real", marks=pytest.mark.real_kernel)])
def test_example_c_program(cc: Callable[..., Path], transport: str) -> None:
    exe = cc(EXAMPLE)
    if transport == "sim":
        out = expect_ok(sim_run([str(exe)]))
    else:
        if not os.path.exists("/dev/iommu"):
            pytest.skip("no /dev/iommu here (run inside the VM: tools/vmtest/run.sh)")
        out = expect_ok(subprocess.run([str(exe)], capture_output=True, text=True, timeout=60))
    assert out.startswith("ok: ")
