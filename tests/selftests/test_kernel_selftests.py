"""Linux's own iommufd selftests on the simulated kernel, test by test against the real one.

tools/selftests/build.sh builds `iommufd` and `iommufd_fail_nth` from the 6.12 sources; the
real 6.12 kernel's TAP outcomes are kept in real_<version>.json (tools/selftests/
record-real.sh runs them in the VM). Here the same binary runs unmodified under
`fastmap sim-run`, and each of its tests must end as it did on the real kernel.

`iommufd_fail_nth` is the exception: the recorded real kernel (the VM's 6.12.95, built
without CONFIG_FAILSLAB/FAIL_PAGE_ALLOC) skips all 7 tests for want of fault injection,
while the simulator models it (a per-thread fail-nth counter over its object and pin
allocations and user copies, reached through sim-run's /proc/.../fail-nth and debugfs).
So on the simulator each of the 7 must pass with injection active, and must have injected
faults: every failing iteration unwound fully, or the harness's teardown
(MD_CHECK_REFS after closing the iommufd) and the next iteration fail.

Tests whose outcome still differs are listed in sim_divergences.txt with the reason; they
are strict xfails, so one that starts matching fails until it leaves the list. Tests listed
there as racy ("~") must match or xfail. The tests in needs_hugepages.txt map MAP_HUGETLB
buffers: the session reserves huge pages on the host as the VM does (tests/hugepages.py);
where it cannot (not root) they skip with the reason. Without a
compiler or the sources the suite skips, unless FASTMAP_REQUIRE_SELFTESTS=1 (CI), where a
failed build, or huge pages that cannot be reserved, fail it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hugepages import HugePages
from tests.selftests.tap import outcomes

pytestmark = pytest.mark.not_under_sanitizer(
    reason="the selftest binaries run under sim-run's uninstrumented interposer"
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REAL_JSON = HERE / "real_6.12.95.json"
if not REAL_JSON.exists() and os.environ.get("FASTMAP_REQUIRE_SELFTESTS") != "1":
    pytest.skip(
        "no recorded real-kernel outcomes (tools/selftests/record-real.sh)", allow_module_level=True
    )
REAL = json.loads(REAL_JSON.read_text())


def _divergences() -> tuple[dict[str, str], dict[str, str]]:
    """(known divergences, racy tests whose outcome may go either way) with reasons."""
    out: dict[str, str] = {}
    racy: dict[str, str] = {}
    path = HERE / "sim_divergences.txt"
    if not path.exists():
        return out, racy
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, why = line.partition(" ")
            if name.startswith("~"):
                racy[name[1:]] = why.strip()
            else:
                out[name] = why.strip()
    return out, racy


DIVERGENCES, RACY = _divergences()
REQUIRED = os.environ.get("FASTMAP_REQUIRE_SELFTESTS") == "1"


def _names(path: Path) -> frozenset[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))


NEEDS_HUGEPAGES = _names(HERE / "needs_hugepages.txt")


def _fastmap_cli() -> str:
    exe = Path(sys.executable).parent / "fastmap"
    return str(exe) if exe.exists() else shutil.which("fastmap") or "fastmap"


@pytest.fixture(scope="module")
def selftest_bin() -> Path:
    proc = subprocess.run(
        [str(REPO / "tools/selftests/build.sh")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        msg = f"building the selftests failed:\n{proc.stderr[-4000:]}"
        if REQUIRED:
            pytest.fail(msg)
        pytest.skip(msg)
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sim_outcomes(selftest_bin: Path, host_hugepages: HugePages) -> dict[str, str]:
    proc = subprocess.run(
        [_fastmap_cli(), "sim-run", "--kernel-version", "612", "--", str(selftest_bin / "iommufd")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    res = outcomes(proc.stdout)
    assert res, f"no TAP results from sim-run:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return res


def test_recorded_outcomes_cover_the_suite() -> None:
    real = REAL["iommufd"]
    assert len(real) == 190
    assert set(DIVERGENCES) | set(RACY) | NEEDS_HUGEPAGES <= set(real)


@pytest.mark.parametrize("name", sorted(REAL["iommufd"]))
def test_same_outcome_as_real_kernel(
    name: str, sim_outcomes: dict[str, str], host_hugepages: HugePages
) -> None:
    if name in NEEDS_HUGEPAGES and not host_hugepages.available:
        msg = f"{name} maps MAP_HUGETLB buffers: {host_hugepages.why}"
        if REQUIRED:
            pytest.fail(msg)
        pytest.skip(msg)
    want = REAL["iommufd"][name]
    got = sim_outcomes.get(name, "missing")
    if name in RACY and got != want:
        pytest.xfail(f"racy on the simulator: {RACY[name]} (real {want}, sim {got})")
    if name in DIVERGENCES:
        if got == want:
            pytest.fail(
                f"{name} now matches the real kernel ({want}): drop it from sim_divergences.txt"
            )
        pytest.xfail(f"known divergence: {DIVERGENCES[name]} (real {want}, sim {got})")
    assert got == want, f"{name}: real kernel {want}, simulator {got}"


FAIL_NTH_TESTS = sorted(REAL["iommufd_fail_nth"])


def test_real_kernel_skips_fail_nth() -> None:
    # Why the simulator is held to "pass" instead of the recorded outcome: the real kernel
    # the outcomes come from has no fault injection, so it can only skip.
    assert len(FAIL_NTH_TESTS) == 7
    assert set(REAL["iommufd_fail_nth"].values()) == {"skip"}


@pytest.mark.parametrize("name", FAIL_NTH_TESTS)
def test_fail_nth_passes_with_injection(name: str, selftest_bin: Path, tmp_path: Path) -> None:
    report = tmp_path / "injected"
    env = dict(os.environ, FASTMAP_SIM_FAIL_NTH_REPORT=str(report))
    proc = subprocess.run(
        [
            _fastmap_cli(),
            "sim-run",
            "--kernel-version",
            "612",
            "--",
            str(selftest_bin / "iommufd_fail_nth"),
            "-t",
            name.split(".", 1)[1],
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
    )
    got = outcomes(proc.stdout)
    assert got == {name: "pass"}, f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    assert report.exists(), "the test never armed fail-nth"
    assert int(report.read_text()) > 0, "fail-nth was armed but no fault was injected"
