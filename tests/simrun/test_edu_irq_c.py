"""examples/edu_irq_driver.c, unmodified, on both kernels: under `fastmap sim-run --device
edu` here (its BAR0 mmap goes to the simulator's trapped mapping, its MSI eventfd is
signalled by the simulated edu), and directly on Linux 6.12 in the VM tier."""

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

EXAMPLE = ROOT / "examples" / "edu_irq_driver.c"


@pytest.mark.parametrize("transport", ["sim", pytest.param("real", marks=pytest.mark.real_kernel)])
def test_edu_irq_driver_c(cc: Callable[..., Path], transport: str) -> None:
    exe = cc(EXAMPLE)
    if transport == "sim":
        out = expect_ok(sim_run([str(exe)], "--device", "edu"))
    else:
        if not os.path.exists("/dev/iommu"):
            pytest.skip("no /dev/iommu here (run inside the VM: tools/vmtest/run.sh)")
        out = expect_ok(subprocess.run([str(exe)], capture_output=True, text=True, timeout=120))
    assert out.startswith("ok: 2 DMAs of ")
