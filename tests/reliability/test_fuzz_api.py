"""A hypothesis-driven fuzzer of the public Python API: wrong types, negative, huge and
out-of-range values, closed objects, and signals arriving mid-call.

Only typed exceptions may come out (fastmap's errors, ValueError, TypeError), and a call
that raised must leave everything as it was: the IOAS as fastmap sees it (segments, pins),
its usable ranges, the fds open, and, checked destructively at the end of each example,
that the kernel maps exactly what fastmap's engine says (tests/reliability/fail_nth.py).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmap import uapi
from fastmap.ioas import Ioas
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.sim import SimKernel
from tests.reliability.fail_nth import TYPED, FailNthKernel, World, digest

PAGE = 4096
U64 = 1 << 64

#: Integers a careless caller passes: around the u32/u64 edges, negative, bools, non-ints.
wild_int = st.one_of(
    st.sampled_from(
        [0, 1, 2, PAGE, PAGE - 1, (1 << 32) - 1, 1 << 32, (1 << 32) + 1, U64 - 1, U64, -1, -PAGE]
    ),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.integers(min_value=0, max_value=1 << 24).map(lambda n: n * PAGE),
    st.booleans(),
)
wild = st.one_of(
    wild_int, st.none(), st.floats(allow_nan=True), st.text(max_size=4), st.binary(max_size=8)
)
wild_list = st.one_of(st.lists(wild_int, max_size=4), st.just([]), wild, st.lists(wild, max_size=3))


class Fixture:
    """A backend and an IOAS with two pinned buffers, on a fresh simulated kernel."""

    def __init__(self) -> None:
        self.kernel = FailNthKernel(SimKernel())
        self.be = IOMMUFDBackend(kernel=self.kernel)
        self.be.connect()
        self.ioas = self.be.alloc_ioas()
        self.closed_ioas = self.be.alloc_ioas()
        self.closed_ioas.close()
        self.owner = np.zeros(64 * PAGE, np.uint8)
        off = (-self.owner.ctypes.data) % PAGE
        self.buf = self.owner[off : off + 32 * PAGE]
        self.iovas = [self.ioas.map(self.buf[: 4 * PAGE]), self.ioas.map(self.buf[8 * PAGE :])]
        self.world = World(self.kernel, self.be, lambda: [self.ioas])

    def state(self) -> tuple[object, ...]:
        segs = [(s.iova, s.length, self.ioas.pinned(s.iova)) for s in self.ioas.segments()]
        return (segs, self.ioas.iova_ranges(), sorted(self.kernel.fault.open_fds))

    def check_kernel(self) -> None:
        """The kernel maps exactly what the engine says (destroys the fixture)."""
        d = digest(self.world)
        _, _, agrees, leftover = d["ioas0"]  # type: ignore[misc]
        assert all(a is True for a in agrees), d
        assert leftover == 0, d


Call = Callable[[Fixture], object]

CALLS: dict[str, Callable[..., Call]] = {
    "map": lambda a, b, c: lambda f: f.ioas.map(a, b, c),
    "map_buf": lambda a, b, c: lambda f: f.ioas.map(f.buf[: 2 * PAGE], a, b),
    "unmap": lambda a, b, c: lambda f: f.ioas.unmap(a, b),
    "map_batch": lambda a, b, c: lambda f: f.ioas.map_batch(a, b, c),
    "map_batch_threads": lambda a, b, c: (
        lambda f: f.ioas.map_batch([f.buf.ctypes.data], [PAGE], None, threads=a)
    ),
    "unmap_batch": lambda a, b, c: lambda f: f.ioas.unmap_batch(a, b),
    "translate_va": lambda a, b, c: lambda f: f.ioas.translate_va(a),
    "translate_iova": lambda a, b, c: lambda f: f.ioas.translate_iova(a),
    "allow_iovas": lambda a, b, c: lambda f: f.ioas.allow_iovas([(a, b)]),
    "copy_from": lambda a, b, c: lambda f: f.ioas.copy_from(f.closed_ioas, a, b, c),
    "closed_map": lambda a, b, c: lambda f: f.closed_ioas.map(f.buf[:PAGE]),
    "map_dma": lambda a, b, c: lambda f: f.be.map_dma(a, b, PAGE, c),
    "unmap_dma": lambda a, b, c: lambda f: f.be.unmap_dma(a, b, c),
    "free_id": lambda a, b, c: lambda f: f.be.free_id(a),
    "get_dirty_bitmap": lambda a, b, c: lambda f: f.be.get_dirty_bitmap(a, 0, b, c),
    "set_dirty_tracking": lambda a, b, c: lambda f: f.be.set_dirty_tracking(a, bool(b)),
    "alloc_hwpt": lambda a, b, c: lambda f: f.be.alloc_hwpt(a, b, c),
    "ioctl": lambda a, b, c: lambda f: f.kernel.ioctl(f.be.fd, a, b),
    "ioctl_struct": lambda a, b, c: (
        lambda f: f.kernel.ioctl(
            f.be.fd, uapi.IOMMU_IOAS_UNMAP, uapi.new(uapi.iommu_ioas_unmap, ioas_id=a, iova=b)
        )
    ),
    "pread": lambda a, b, c: lambda f: f.kernel.pread(a, b, c),
    "pwrite": lambda a, b, c: lambda f: f.kernel.pwrite(a, b, c),
    "open": lambda a, b, c: lambda f: f.kernel.open(a, b),
    "close_fd": lambda a, b, c: lambda f: f.kernel.close(a),
}

# Calls that must not succeed on the fixture however they are called (they would take the
# fixture apart, or act on something closed).
MUST_FAIL = {"closed_map", "copy_from", "close_fd"}
# Raw calls whose first argument names the object they act on: aimed at any other id (say
# the fixture's id + 2**32, which truncation would turn into it), they must leave the
# fixture's IOAS alone even when they succeed.
BY_ID = {"map_dma", "unmap_dma", "free_id", "ioctl_struct", "set_dirty_tracking"}


@contextmanager
def signals_mid_call(enabled: bool) -> Iterator[None]:
    """SIGALRM every 50 µs while the body runs (the handler only counts)."""
    if not enabled:
        yield
        return
    seen = [0]

    def handler(signum: int, frame: Any) -> None:
        seen[0] += 1

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 50e-6, 50e-6)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        # A signal delivered just before must still find our handler, not the default.
        time.sleep(0.001)
        signal.signal(signal.SIGALRM, old)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    name=st.sampled_from(sorted(CALLS)),
    a=st.one_of(wild, wild_list),
    b=st.one_of(wild, wild_list),
    c=st.one_of(wild, wild_list),
    signals=st.booleans(),
)
def test_public_api_raises_only_typed_errors_and_changes_nothing(
    name: str, a: Any, b: Any, c: Any, signals: bool
) -> None:
    if name == "close_fd" and a == 3:
        a = 99  # closing the fixture's own iommufd is allowed, and not what this tests
    f = Fixture()
    before = f.state()
    call = CALLS[name](a, b, c)
    try:
        with signals_mid_call(signals):
            call(f)
    except TYPED:
        assert f.state() == before, name
    else:
        assert name not in MUST_FAIL or name == "close_fd", f"{name} succeeded"
        if name in BY_ID:
            if a is not f.ioas.id and a != f.ioas.id:
                assert f.state() == before, f"{name}({a!r}) changed IOAS {f.ioas.id}"
            else:
                return  # a raw call that really acted on the fixture's IOAS
        if name in ("ioctl", "open", "close_fd"):
            return
    f.check_kernel()


@settings(max_examples=20, deadline=None)
@given(n=st.integers(min_value=1, max_value=600), threads=st.sampled_from([1, 2, 4]))
def test_signals_during_big_batches_leave_kernel_and_engine_in_agreement(
    n: int, threads: int
) -> None:
    f = Fixture()
    owner = np.zeros((n + 1) * PAGE, np.uint8)
    base = owner.ctypes.data + (-owner.ctypes.data) % PAGE
    vas = base + np.arange(n, dtype=np.uint64) * PAGE
    iovas = 0x100000000 + np.arange(n, dtype=np.uint64) * 2 * PAGE
    with signals_mid_call(True):
        f.ioas.map_batch(vas, np.full(n, PAGE, np.uint64), iovas, threads=threads)
        assert len(f.ioas) == n + 2
        f.ioas.unmap_batch(iovas[: n // 2], np.full(n // 2, PAGE, np.uint64))
    f.check_kernel()
    assert isinstance(f.ioas, Ioas)
