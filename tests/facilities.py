"""Skips for what a kernel lacks, and the real-kernel tier's rule that some must not skip.

A real_kernel test that finds its kernel without /dev/iommu, a VFIO device, the selftest
mock domain or huge pages skips through `missing(facility, why)`. Outside the VM that is
right. Inside the VM, FASTMAP_REQUIRE_REAL lists the facilities the guest was booted with
(comma separated: iommu, vfio, selftest, hugetlb); tests/conftest.py turns a skip for one of
those into a failure, so a guest that lost /dev/iommu cannot pass by skipping everything.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

FACILITIES = ("iommu", "vfio", "selftest", "hugetlb")
PREFIX = "missing "


def missing(facility: str, why: str) -> NoReturn:
    """Skip: this kernel lacks `facility` (one of FACILITIES)."""
    assert facility in FACILITIES, facility
    pytest.skip(f"{PREFIX}{facility}: {why}")


def required() -> frozenset[str]:
    """The facilities whose absence fails a real_kernel test here (FASTMAP_REQUIRE_REAL)."""
    names = {n.strip() for n in os.environ.get("FASTMAP_REQUIRE_REAL", "").split(",")}
    unknown = names - set(FACILITIES) - {""}
    if unknown:
        raise ValueError(f"FASTMAP_REQUIRE_REAL: unknown facilities {sorted(unknown)}")
    return frozenset(names - {""})


def facility_of(skip_reason: str) -> str | None:
    """The facility a skip reason says is missing, if it came from `missing`."""
    reason = skip_reason.removeprefix("Skipped: ")
    if not reason.startswith(PREFIX):
        return None
    name = reason[len(PREFIX) :].split(":", 1)[0]
    return name if name in FACILITIES else None


# For tests that need the simulator's machine (devices with dirty tracking, several devices
# or groups, DMA writers): they run on "sim" only and so are not real_kernel tests.
only_on_sim = pytest.mark.parametrize("kernel", ["sim"], indirect=True)
