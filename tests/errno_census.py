"""A pytest plugin that records which errno each kernel call failed with during a run:
`FASTMAP_ERRNO_CENSUS=out.json pytest -p tests.errno_census ...`. Only errors fastmap itself
raised (from src/fastmap) are counted, not ones tests construct. tools/gen_error_guide.py
turns the census into docs/errors.md."""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import pytest

from fastmap import _core
from fastmap.errors import KernelError
from fastmap.kernel import Kernel

_SRC = str(Path(__file__).resolve().parents[1] / "src" / "fastmap")
_seen: Counter[tuple[str, str, int]] = Counter()


_KNOWN_OPENS = (
    "/dev/iommu",
    "/dev/vfio/vfio",
    "/dev/vfio/N",
    "/dev/vfio/devices/vfioN",
    "/dev/char/MAJ:MIN",
)


def normalize_call(call: str) -> str:
    """'open(/dev/vfio/devices/vfio3)' -> 'open(/dev/vfio/devices/vfioN)', a sysfs path's
    paths -> one 'sysfs read', ioctl numbers no kernel knows -> 'unknown ioctl'."""
    call = re.sub(r"/dev/vfio/devices/vfio\d+", "/dev/vfio/devices/vfioN", call)
    call = re.sub(r"/dev/vfio/\d+", "/dev/vfio/N", call)
    call = re.sub(r"/dev/char/\d+:\d+", "/dev/char/MAJ:MIN", call)
    if call.startswith(("/sys/", "sysfs /sys/")):
        return "sysfs read (/sys/bus/pci/devices/BDF/...)"
    if call.startswith("open(") and call[5:-1] not in _KNOWN_OPENS:
        return "open(other path)"
    if call.startswith(("_IO", "ioctl 0x")):
        return "unknown ioctl"
    return call


def _injected(frame: FrameType | None) -> bool:
    """The failure came from a fault-injecting kernel (_core.FaultKernel), not the kernel."""
    fault_kernel = getattr(_core, "FaultKernel", None)
    while frame is not None and fault_kernel is not None:
        owner = frame.f_locals.get("self")
        for kernel in (owner, getattr(owner, "kernel", None), getattr(owner, "_kernel", None)):
            if isinstance(kernel, Kernel):
                return isinstance(kernel.core, fault_kernel)
        frame = frame.f_back
    return False


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("FASTMAP_ERRNO_CENSUS"):
        return
    original = KernelError.__init__

    def recording(
        self: KernelError,
        err: int,
        call: str,
        arguments: Mapping[str, object] | None = None,
        hint: str | None = None,
    ) -> None:
        original(self, err, call, arguments, hint)
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_name in ("__init__", "from_errno"):
            frame = frame.f_back  # type: ignore[assignment]
        if frame is not None and frame.f_code.co_filename.startswith(_SRC) and not _injected(frame):
            kernel = "real" if os.path.exists("/dev/iommu") else "sim"
            _seen[(normalize_call(call), kernel, err)] += 1

    KernelError.__init__ = recording  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    out = os.environ.get("FASTMAP_ERRNO_CENSUS")
    if not out:
        return
    rows = [
        {"call": c, "kernel": k, "errno": e, "count": n} for (c, k, e), n in sorted(_seen.items())
    ]
    Path(out).write_text(json.dumps(rows, indent=1) + "\n")
