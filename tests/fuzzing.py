"""Hypothesis budgets that follow the active profile (registered in tests/conftest.py).

Tests say how many examples they want in an ordinary run with `examples(n)` and leave
derandomization to the profile: "default" and "ci" are derandomized (reproducible), "fuzz"
(`make fuzz`) draws fresh random inputs and multiplies every budget by FASTMAP_FUZZ_FACTOR
(default 20; `make fuzz` sets 5).
"""

from __future__ import annotations

import os

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
FUZZ_FACTOR = int(os.environ.get("FASTMAP_FUZZ_FACTOR", "20"))


def examples(n: int) -> int:
    """The number of examples a test asking for `n` runs under the active profile."""
    return n * FUZZ_FACTOR if PROFILE == "fuzz" else n
