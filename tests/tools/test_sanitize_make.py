"""tools/sanitize/sanitize.mk: make can parse the sanitizer targets and picks their tests.

A dry run (`make -n`) only prints the commands; it fails if make refuses the Makefile (as
it did when the test-tsan grep pattern held a "(" inside $(shell ...)).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.not_under_sanitizer(reason="reads the source tree's Makefile")
@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_tsan_target_parses_and_selects_the_threaded_tests() -> None:
    r = subprocess.run(
        ["make", "-n", "test-tsan"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    run = next(line for line in r.stdout.splitlines() if "build/tsan/pkg" in line)
    for test in ("tests/conformance/test_fork.py", "tests/conformance/test_raw_threads.py"):
        assert test in run
    assert "tests/vm/" not in run
