"""examples/edu_irq_driver.py runs end to end: BAR0 through mmap, every DMA completed by an
interrupt on an eventfd (MSI, and INTx with unmasking), on the simulator and, in the VM, on
the real kernel with QEMU's edu."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from fastmap.kernel import Kernel
from tests.script_module import load_script

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "edu_irq_driver.py"
pytestmark = pytest.mark.not_under_sanitizer(
    reason="the simulated BAR mapping single-steps through SIGSEGV/SIGTRAP handlers"
)


def _example() -> ModuleType:
    return load_script(EXAMPLE, "fastmap_example_edu_irq_driver")


@pytest.mark.parametrize("argv", [[], ["--intx"]], ids=["msi", "intx"])
def test_example(
    kernel: Kernel, edu: str, hwpt_alloc: bool, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    del edu  # plugged into the simulated machine, or the VM's own: the example finds it
    if kernel.name == "real" and not hwpt_alloc:
        argv = [*argv, "--kernel-domains"]
    sim = ["--kernel", "sim"] if kernel.name == "sim" else ["--kernel", "real"]
    assert _example().main([*sim, "--size", "8192", *argv]) == 0
    out = capsys.readouterr().out
    assert "every byte matches" in out and "RESULT edu_irq_driver OK" in out
    assert "4 DMAs, each completed by a" in out
