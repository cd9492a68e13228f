"""examples/edu_dma.py runs end to end: on the simulated kernel always, on the real one in
the VM (the example itself picks the kernel; it plugs an edu into the simulated machine)."""

from __future__ import annotations

import pytest

from fastmap.kernel import Kernel
from tests.lifecycle.conftest import load_example


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--legacy"],
        ["--ram", "memfd", "--size", "10000"],
        ["--kernel-domains"],
        ["--legacy", "--ram", "memfd"],
    ],
    ids=["iommufd", "legacy", "memfd-odd-size", "kernel-domains", "legacy-memfd"],
)
def test_example_on_the_simulator(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert load_example().main(["--kernel", "sim", *argv]) == 0
    out = capsys.readouterr().out
    assert "every byte matches" in out and "blocked" in out and "RESULT edu_dma OK" in out


@pytest.mark.parametrize("argv", [[], ["--legacy"]], ids=["iommufd", "legacy"])
def test_example_on_the_real_kernel(
    kernel: Kernel, hwpt_alloc: bool, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    if kernel.name != "real":
        pytest.skip("the simulator runs are above")
    if not hwpt_alloc and not argv:
        argv = ["--kernel-domains"]
    assert load_example().main(["--kernel", "real", "--size", "8192", *argv]) == 0
    assert "RESULT edu_dma OK" in capsys.readouterr().out
