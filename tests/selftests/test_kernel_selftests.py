"""Linux's own iommufd selftests on the simulated kernel, test by test against the real one.

tools/selftests/build.sh builds `iommufd` and `iommufd_fail_nth` from the 6.12 sources; the
real 6.12 kernel's TAP outcomes are kept in real_<version>.json (tools/selftests/
record-real.sh runs them in the VM). Here the same binary runs unmodified under
`fastmap sim-run`, and each of its tests must end as it did on the real kernel.

Tests whose outcome still differs are listed in sim_divergences.txt with the reason; they
are strict xfails, so one that starts matching fails until it leaves the list. Tests listed
there as racy ("~") must match or xfail. Without a
compiler or the sources the suite skips, unless FASTMAP_REQUIRE_SELFTESTS=1 (CI), where a
failed build fails it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.selftests.tap import outcomes

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REAL_JSON = HERE / "real_6.12.95.json"
if not REAL_JSON.exists() and os.environ.get("FASTMAP_REQUIRE_SELFTESTS") != "1":
    pytest.skip("no recorded real-kernel outcomes (tools/selftests/record-real.sh)",
                allow_module_level=True)
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


def _fastmap_cli() -> str:
    exe = Path(sys.executable).parent / "fastmap"
    return str(exe) if exe.exists() else shutil.which("fastmap") or "fastmap"


@pytest.fixture(scope="module")
def selftest_bin() -> Path:
    required = os.environ.get("FASTMAP_REQUIRE_SELFTESTS") == "1"
    proc = subprocess.run(
        [str(REPO / "tools/selftests/build.sh")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        msg = f"building the selftests failed:\n{proc.stderr[-4000:]}"
        if required:
            pytest.fail(msg)
        pytest.skip(msg)
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sim_outcomes(selftest_bin: Path) -> dict[str, str]:
    proc = subprocess.run(
        [_fastmap_cli(), "sim-run", "--kernel-version", "612", "--",
         str(selftest_bin / "iommufd")],
        capture_output=True, text=True, timeout=900, check=False,
    )
    res = outcomes(proc.stdout)
    assert res, f"no TAP results from sim-run:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return res


def test_recorded_outcomes_cover_the_suite() -> None:
    real = REAL["iommufd"]
    assert len(real) == 190
    assert set(DIVERGENCES) | set(RACY) <= set(real)


@pytest.mark.parametrize("name", sorted(REAL["iommufd"]))
def test_same_outcome_as_real_kernel(name: str, sim_outcomes: dict[str, str]) -> None:
    want = REAL["iommufd"][name]
    got = sim_outcomes.get(name, "missing")
    if name in RACY and got != want:
        pytest.xfail(f"racy on the simulator: {RACY[name]} (real {want}, sim {got})")
    if name in DIVERGENCES:
        if got == want:
            pytest.fail(f"{name} now matches the real kernel ({want}): drop it from "
                        "sim_divergences.txt")
        pytest.xfail(f"known divergence: {DIVERGENCES[name]} (real {want}, sim {got})")
    assert got == want, f"{name}: real kernel {want}, simulator {got}"
