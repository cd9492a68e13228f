"""Fault injection at every ioctl of an operation, checked against the state it leaves.

`FailNthKernel(inner)` puts a `_core.FaultKernel` between everything and `inner`, so the
Python layer, the C++ batch engine and the dirty harvester all count towards the same Nth
call. `drive(build, op)` runs `op` on a freshly built world with the 1st, 2nd, ... open or
ioctl failing (ENOMEM, as the kernel's fail_nth mostly produces) until the op succeeds with
the fault not reached, and after each run takes a destructive `digest` of the world:

* the fds open through the kernel;
* each IOAS as fastmap sees it (segments, and whether each holds its buffer pinned), and the
  kernel's agreement: every segment unmaps exactly, and an unmap-all after them finds
  nothing left;
* the object table: which ids IOMMU_DESTROY finds, over passes until nothing changes.

A failed run must leave the digest of the world before the op; a run that succeeded, the
digest of a clean run. Each run has its own simulated kernel, so ids and fd numbers are
reproducible.
"""

from __future__ import annotations

import errno as _errno
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastmap import _core, uapi
from fastmap.errors import FastmapError, KernelError
from fastmap.ioas import Ioas
from fastmap.kernel import Kernel
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.sim import SimKernel

MAX_IDS = 48
#: Exceptions an operation may raise when one of its calls fails.
TYPED = (FastmapError, ValueError, TypeError)


class FailNthKernel(Kernel):
    """A Kernel whose every open/ioctl can be made to fail (see module docstring)."""

    def __init__(self, inner: Kernel) -> None:
        self.fault = _core.FaultKernel(inner.core)
        # Linux's IOMMU_DESTROY allocates nothing: it fails only for a wrong id or an object
        # in use, which a correct caller never asks for, so there is nothing to inject.
        self.fault.spare(uapi.IOMMU_DESTROY)
        super().__init__(self.fault, inner.version)
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        # machine, config, sim: whatever the inner kernel offers.
        return getattr(self.inner, name)


@dataclass
class World:
    """What an operation acts on; `ioases` are the IOASes whose contents are checked."""

    kernel: FailNthKernel
    be: IOMMUFDBackend
    ioases: Callable[[], list[Ioas]]
    objects: dict[str, Any] = field(default_factory=dict)


def digest(w: World) -> dict[str, object]:
    """The world's state; destroys it (unmaps, frees objects)."""
    k = w.kernel
    k.fault.fail_nth(0, 0)
    out: dict[str, object] = {"fds": sorted(k.fault.open_fds)}
    fd = w.be.fd
    for n, ioas in enumerate(w.ioases()):
        segs = [(s.iova, s.length, ioas.pinned(s.iova)) for s in ioas.segments()]
        kernel_agrees = []
        for iova, length, _ in segs:
            cmd = uapi.new(uapi.iommu_ioas_unmap, ioas_id=ioas.id, iova=iova, length=length)
            try:
                k.ioctl(fd, uapi.IOMMU_IOAS_UNMAP, cmd)
                kernel_agrees.append(int(cmd.length) == length)
            except KernelError as e:
                kernel_agrees.append(e.errno_name)
        rest = uapi.new(uapi.iommu_ioas_unmap, ioas_id=ioas.id, iova=0, length=(1 << 64) - 1)
        try:
            k.ioctl(fd, uapi.IOMMU_IOAS_UNMAP, rest)
            leftover: object = int(rest.length)
        except KernelError as e:
            leftover = e.errno_name
        out[f"ioas{n}"] = (ioas.id, segs, kernel_agrees, leftover)
    out["objects"] = object_table(k, fd)
    return out


def object_table(k: Kernel, fd: int) -> dict[int, str]:
    """{id: 'destroyed' or the errno that kept it} for the ids IOMMU_DESTROY finds."""
    found: dict[int, str] = {}
    progress = True
    while progress:
        progress = False
        for obj in range(1, MAX_IDS + 1):
            if found.get(obj) == "destroyed":
                continue
            try:
                k.ioctl(fd, uapi.IOMMU_DESTROY, uapi.new(uapi.iommu_destroy, id=obj))
            except KernelError as e:
                if e.errno != _errno.ENOENT:
                    found[obj] = e.errno_name
                continue
            found[obj] = "destroyed"
            progress = True
    return found


Build = Callable[[FailNthKernel], World]
Op = Callable[[World], object]


@dataclass
class Report:
    """What drive() saw: the number of fallible calls, and how each injected run ended."""

    calls: int = 0
    failures: list[str] = field(default_factory=list)


def _run(op: Op, w: World) -> None:
    # A warning is how fastmap reports a failure it worked around (a fallback): the op
    # goes on, so here it is not an error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op(w)


def drive(build: Build, op: Op, *, limit: int = 400, only: list[int] | None = None) -> Report:
    """Run `op` with its 1st, 2nd, ... call failing until it succeeds untouched (see the
    module docstring); AssertionError on the first run that leaves a wrong state. `only`
    tries just those calls (for operations with hundreds), then one run without a fault."""

    def fresh() -> World:
        k = FailNthKernel(SimKernel())
        return build(k)

    before = digest(fresh())
    clean_world = fresh()
    clean_world.kernel.fault.fail_nth(0, 0)
    _run(op, clean_world)
    after = digest(clean_world)
    report = Report()
    for nth in [*only, 1 << 62] if only is not None else range(1, limit + 1):
        w = fresh()
        w.kernel.fault.fail_nth(nth, _errno.ENOMEM)
        try:
            _run(op, w)
        except TYPED as e:
            fired = w.kernel.fault.fired
            got = digest(w)
            assert fired, f"call {nth}: {e!r} without the injected fault"
            assert got == before, f"call {nth} failed ({e!r}) and left {got}, not {before}"
            report.failures.append(type(e).__name__)
            continue
        fired = w.kernel.fault.fired
        got = digest(w)
        assert got == after, f"call {nth} (fired={fired}): op succeeded but left {got}, not {after}"
        if not fired:
            report.calls = nth - 1
            return report
    raise AssertionError(f"the op still reached its fault after {limit} calls")
