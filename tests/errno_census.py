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

import pytest

from fastmap.errors import KernelError

_SRC = str(Path(__file__).resolve().parents[1] / "src" / "fastmap")
_seen: Counter[tuple[str, str, int]] = Counter()


def normalize_call(call: str) -> str:
    """'open(/dev/vfio/devices/vfio3)' -> 'open(/dev/vfio/devices/vfioN)', and so on."""
    call = re.sub(r"/dev/vfio/devices/vfio\d+", "/dev/vfio/devices/vfioN", call)
    call = re.sub(r"/dev/vfio/\d+", "/dev/vfio/N", call)
    call = re.sub(r"/dev/char/\d+:\d+", "/dev/char/MAJ:MIN", call)
    return re.sub(r"^open\((/(?:tmp|proc|sys|nonexistent)[^)]*)\)$", "open(other path)", call)


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
        if frame is not None and frame.f_code.co_filename.startswith(_SRC):
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
