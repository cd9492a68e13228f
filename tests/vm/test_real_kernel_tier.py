"""The real-kernel tier: boot Linux 6.12 under QEMU and run fastmap's suites inside it.

Inside the guest /dev/iommu exists, so every test parametrized over transports runs its
"real" variant there (the conformance suite, the differential suite comparing the simulator
with the kernel, the engine and lifecycle tests, the edu driver doing real DMA). Any
disagreement between fastmap and the kernel fails here.

The guest selects `-m real_kernel` (the simulator variants already ran on the host), and the
runner sets FASTMAP_REQUIRE_REAL to the facilities the guest was booted with: a real_kernel
test that skips for lack of one of them fails (tests/facilities.py). The JUnit report the
guest writes must show passed real-kernel tests. test_tier_fails_without_dev_iommu proves
that a guest whose /dev/iommu is gone fails the tier instead of skipping through it.

Run alone with `pytest -m vm` (`make test-vm`). Without QEMU these tests skip, except when
FASTMAP_REQUIRE_VM=1 (CI), where a missing VM is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tools" / "vmtest" / "run.sh"
pytestmark = pytest.mark.vm

# What each boot offers, so what must not be missing (tests/facilities.py).
VIRTIO_FACILITIES = "iommu,vfio,selftest,hugetlb"
VTD_FACILITIES = "iommu,vfio,hugetlb"  # VT-d refuses the selftest mock domain


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


@dataclass
class GuestRun:
    result: subprocess.CompletedProcess[str]
    junit: Path

    def counts(self) -> dict[str, int]:
        """passed/failed/errors/skipped/xfailed/xpassed from the guest's JUnit report."""
        c = dict.fromkeys(("passed", "failed", "errors", "skipped", "xfailed"), 0)
        if not self.junit.is_file():
            return c
        for case in ET.parse(self.junit).getroot().iter("testcase"):
            kinds = {child.tag for child in case}
            if "error" in kinds:
                c["errors"] += 1
            elif "failure" in kinds:
                c["failed"] += 1
            elif "skipped" in kinds:
                skipped = case.find("skipped")
                xfail = skipped is not None and skipped.get("type") == "pytest.xfail"
                c["xfailed" if xfail else "skipped"] += 1
            else:
                c["passed"] += 1
        return c

    def report(self) -> str:
        tail = "\n".join(self.result.stdout.splitlines()[-60:])
        return (
            f"exit {self.result.returncode}, {self.counts()}\n--- guest output (tail) ---\n"
            f"{tail}\n--- runner ---\n{self.result.stderr[-3000:]}"
        )


def run_in_vm(
    out: Path,
    iommu: str,
    pytest_args: list[str],
    timeout: int,
    require: str,
    prelude: list[str] | None = None,
) -> GuestRun:
    """Boot with `iommu` and run pytest on the real_kernel tests selected by `pytest_args`;
    `prelude` runs first in the guest (a shell command)."""
    junit = out / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs",
               "-m", "real_kernel", f"--junitxml={junit}", *pytest_args]  # fmt: skip
    if prelude:
        command = ["sh", "-c", f'{" ".join(prelude)} && exec "$@"', "sh", *command]
    cmd = [str(RUNNER), "--iommu", iommu, "--timeout", str(timeout), "--out", str(out),
           "--env", f"FASTMAP_REQUIRE_REAL={require}", "--", *command]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 120)
    return GuestRun(result, junit)


def test_suites_pass_on_linux_6_12_with_virtio_iommu(tmp_path: Path) -> None:
    """Everything in one boot: mock domains (dirty tracking), VFIO cdev + edu, Type1."""
    _require_vm()
    run = run_in_vm(tmp_path, "virtio", ["tests"], timeout=2400, require=VIRTIO_FACILITIES)
    print(run.result.stdout, "\nreal-kernel tier, virtio:", run.counts())
    assert run.result.returncode == 0, run.report()
    counts = run.counts()
    assert counts["passed"] > 0 and counts["failed"] == counts["errors"] == 0, run.report()


def test_edu_dma_through_emulated_vtd(tmp_path: Path) -> None:
    """The VFIO paths again behind emulated Intel VT-d, the IOMMU real hosts have."""
    _require_vm()
    run = run_in_vm(
        tmp_path, "vtd", ["tests", "-k", "vfio or edu or cdev or lifecycle"],
        timeout=1800, require=VTD_FACILITIES,
    )  # fmt: skip
    print(run.result.stdout, "\nreal-kernel tier, vtd:", run.counts())
    assert run.result.returncode == 0, run.report()
    counts = run.counts()
    assert counts["passed"] > 0 and counts["failed"] == counts["errors"] == 0, run.report()


def test_tier_fails_without_dev_iommu(tmp_path: Path) -> None:
    """A guest without /dev/iommu (removed from its devtmpfs before pytest starts: opening
    it fails with ENOENT, as on a kernel without iommufd) must fail the tier, not skip."""
    _require_vm()
    run = run_in_vm(
        tmp_path, "none", ["tests/conformance/test_ioas.py"], timeout=600,
        require=VIRTIO_FACILITIES, prelude=["rm", "-f", "/dev/iommu", "&&", "test", "!", "-e",
                                            "/dev/iommu"],
    )  # fmt: skip
    counts = run.counts()
    print(run.result.stdout, "\nguest without /dev/iommu:", counts)
    assert run.result.returncode not in (0, 125), run.report()
    assert counts["passed"] == 0 and counts["errors"] + counts["failed"] > 0, run.report()
    assert "skipped for lack of 'iommu'" in run.result.stdout, run.report()
