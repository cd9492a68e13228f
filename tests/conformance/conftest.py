"""Fixtures of the raw errno face (raw.py): the `_core.Kernel` of the parametrized kernel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fastmap.kernel import Kernel

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
