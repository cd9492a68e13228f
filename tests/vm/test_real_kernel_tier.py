"""The real-kernel tier: boot Linux 6.12 under QEMU and run fastmap's suites inside it.

Inside the guest /dev/iommu exists, so every test parametrized over transports runs its
"real" variant there (the conformance suite, the differential suite comparing the simulator
with the kernel, the engine and lifecycle tests, the edu driver doing real DMA). Any
disagreement between fastmap and the kernel fails here.

Run alone with `pytest -m vm` (`make test-vm`). Without QEMU these tests skip, except when
FASTMAP_REQUIRE_VM=1 (CI), where a missing VM is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tools" / "vmtest" / "run.sh"
pytestmark = pytest.mark.vm

# What the guest runs: the tests that have a real-kernel side. -k keeps the "real" variants
# and the differential suite; the simulator-only variants already ran on the host.
GUEST_SELECTION = "real or differential or vfio or edu"


def _require_vm() -> None:
    missing = []
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64 (tools/vmtest/install-qemu.sh)")
    kernel = subprocess.run(
        [str(RUNNER.parent / "kernel.sh"), "--no-build"], capture_output=True, text=True
    )
    if kernel.returncode != 0:
        missing.append("a kernel (tools/vmtest/build-kernel.sh, or ../shared/vmtest/bzImage)")
    if missing:
        message = "the VM tier needs " + " and ".join(missing)
        if os.environ.get("FASTMAP_REQUIRE_VM") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _run_in_vm(
    iommu: str, pytest_args: list[str], timeout: int
) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(RUNNER),
        "--iommu",
        iommu,
        "--timeout",
        str(timeout),
        "--",
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfEs",
        "-m",
        "not vm",
        *pytest_args,
    ]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 120)


def _report(result: subprocess.CompletedProcess[str]) -> str:
    tail = "\n".join(result.stdout.splitlines()[-60:])
    runner = result.stderr[-3000:]
    return (
        f"exit {result.returncode}\n--- guest output (tail) ---\n{tail}\n--- runner ---\n{runner}"
    )


def test_suites_pass_on_linux_6_12_with_virtio_iommu() -> None:
    """Everything in one boot: mock domains (dirty tracking), VFIO cdev + edu, Type1."""
    _require_vm()
    result = _run_in_vm("virtio", ["tests", "-k", GUEST_SELECTION], timeout=2400)
    print(result.stdout)
    assert result.returncode == 0, _report(result)
    assert " passed" in result.stdout and "no tests ran" not in result.stdout


def test_edu_dma_through_emulated_vtd() -> None:
    """The VFIO paths again behind emulated Intel VT-d, the IOMMU real hosts have."""
    _require_vm()
    result = _run_in_vm(
        "vtd", ["tests", "-k", "real and (vfio or edu or cdev or lifecycle)"], timeout=1800
    )
    print(result.stdout)
    assert result.returncode == 0, _report(result)
    assert " passed" in result.stdout
