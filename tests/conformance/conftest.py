"""Fixtures of the raw errno face (raw.py): the `_core.Kernel` of the parametrized kernel."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from fastmap.kernel import Kernel
from tests.facilities import missing

from . import raw


@pytest.fixture
def core(kernel: Kernel) -> Iterator[Any]:
    """The `_core.Kernel` under test ("sim" or "real"); fds the raw helpers opened and the
    test left open are closed afterwards."""
    core = kernel.core
    try:
        yield core
    finally:
        raw.close_leftovers(core)


@pytest.fixture
def mock_core(core: Any, selftest: bool) -> Any:
    """`core`, on a kernel whose iommufd selftest gives mock domains (skips where it
    cannot: tests/conftest.py `selftest`)."""
    return core


@pytest.fixture
def pci(kernel: Kernel) -> dict[str, Any]:
    """An edu device bound to vfio-pci on the kernel under test: its "cdev" and
    "group_path" nodes, "group" number and "bdf" (on the simulator, a fresh device)."""
    if kernel.name == "real":
        from .devices import real_vfio_cdev

        cdev, why = real_vfio_cdev()
        if cdev is None:
            missing("vfio", why)
        node = os.path.basename(cdev)
        sysdev = os.path.realpath(f"/sys/class/vfio-dev/{node}/device")
        group = int(os.path.basename(os.readlink(f"{sysdev}/iommu_group")))
        return {"cdev": cdev, "group_path": f"/dev/vfio/{group}", "group": group,
                "bdf": os.path.basename(sysdev)}  # fmt: skip
    return dict(kernel.machine.add_pci_device())  # type: ignore[attr-defined]
