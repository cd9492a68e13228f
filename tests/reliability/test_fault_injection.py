"""Every public operation with each of its ioctls failing in turn (tests/reliability/
fail_nth.py): a failure leaves the IOAS contents, object table, fds and pins as they were."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fastmap.ioas import Ioas
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice
from fastmap.lifecycle.vfio_iommufd import IommufdContainer
from fastmap.migration import DirtyTracker
from tests.reliability.fail_nth import FailNthKernel, Op, World, drive

PAGE = 4096
GPA = 0x100000
RAM = 1 << 20
BASE_IOVA = 0x40000000


HUGE = 2 << 20


def aligned(pages: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """A 2 MiB-aligned view of `pages` pages (and the array that owns it): the kernel's
    choice of IOVA follows the VA's alignment, so every run must see the same one."""
    owner = np.zeros(pages * PAGE + HUGE, np.uint8)
    off = (-owner.ctypes.data) % HUGE
    return owner, owner[off : off + pages * PAGE]


# --- an IOAS with three pinned buffers -----------------------------------------------------
def ioas_world(k: FailNthKernel) -> World:
    be = IOMMUFDBackend(kernel=k)
    be.connect()
    ioas = be.alloc_ioas()
    bufs = [aligned(2) for _ in range(3)]
    iovas = [ioas.map(view, iova=BASE_IOVA + i * 0x10000) for i, (_, view) in enumerate(bufs)]
    src, src_view = aligned(600)
    return World(
        k, be, lambda: [ioas], {"ioas": ioas, "bufs": bufs, "iovas": iovas, "src": (src, src_view)}
    )


def batch_args(w: World, n: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    view = w.objects["src"][1]
    vas = view.ctypes.data + np.arange(n, dtype=np.uint64) * PAGE
    return vas, np.full(n, PAGE, np.uint64)


def _ioas(w: World) -> Ioas:
    ioas = w.objects["ioas"]
    assert isinstance(ioas, Ioas)
    return ioas


def map_fixed(w: World) -> None:
    vas, lengths = batch_args(w, 16)
    _ioas(w).map_batch(vas, lengths, 0x80000000 + np.arange(16, dtype=np.uint64) * 2 * PAGE)


PARALLEL = 520  # two threads of at least 256 runs each


def map_parallel(w: World) -> None:
    vas, lengths = batch_args(w, PARALLEL)
    iovas = 0x80000000 + np.arange(PARALLEL, dtype=np.uint64) * 2 * PAGE
    _ioas(w).map_batch(vas, lengths, iovas, threads=2)


def map_kernel(w: World) -> None:
    vas, lengths = batch_args(w, 8)
    _ioas(w).map_batch(vas, lengths)


def map_dense(w: World) -> None:
    vas, lengths = batch_args(w, 8)
    _ioas(w).map_batch(vas, lengths, "dense")


def map_one(w: World) -> None:
    _ioas(w).map(w.objects["src"][1][: 4 * PAGE])


def unmap_batch(w: World) -> None:
    _ioas(w).unmap_batch(w.objects["iovas"][:2], [2 * PAGE, 2 * PAGE])


IOAS_OPS: dict[str, Op] = {
    "map_batch fixed": map_fixed,
    "map_batch threads=2": map_parallel,
    "map_batch kernel": map_kernel,
    "map_batch dense": map_dense,
    "map": map_one,
    "unmap_batch": unmap_batch,
}


@pytest.mark.parametrize("name", list(IOAS_OPS))
def test_ioas_operations(name: str) -> None:
    # The parallel batch has PARALLEL calls: fail a sample (each thread's first, middle
    # and last run, and the rollback's neighbourhood) instead of all of them.
    only = [1, 2, 3, 130, 259, 260, 261, 400, 519, 520] if "threads" in name else None
    report = drive(ioas_world, IOAS_OPS[name], only=only)
    if only is None:
        assert report.calls >= 1
        assert len(report.failures) == report.calls


# --- a device in an address space ----------------------------------------------------------
def device_world(attached: bool, tracking: bool = False) -> Any:
    def build(k: FailNthKernel) -> World:
        space = AddressSpace("faults")
        space.add_ram(RAM, GPA)
        be = IOMMUFDBackend(kernel=k)
        be.connect()
        bdf = str(k.machine.add_pci_device(iommu="vtd", dirty=True)["bdf"])
        dev = VFIODevice(bdf, kernel=k)
        if attached:
            dev.attach(space, be)
            if tracking:
                container(dev).set_dirty_page_tracking(True)

        def ioases() -> list[Ioas]:
            c = dev.container
            return [c.ioas] if isinstance(c, IommufdContainer) and not c.ioas._closed else []

        return World(k, be, ioases, {"space": space, "dev": dev})

    return build


def container(dev: VFIODevice) -> IommufdContainer:
    c = dev.container
    assert isinstance(c, IommufdContainer)
    return c


def attach(w: World) -> None:
    w.objects["dev"].attach(w.objects["space"], w.be)


def detach(w: World) -> None:
    w.objects["dev"].detach()


def dirty_start(w: World) -> None:
    container(w.objects["dev"]).set_dirty_page_tracking(True)


def dirty_stop(w: World) -> None:
    container(w.objects["dev"]).set_dirty_page_tracking(False)


def harvest(w: World) -> None:
    container(w.objects["dev"]).query_dirty_ranges([(GPA, RAM)])


def listener_add(w: World) -> None:
    w.objects["space"].add_ram(RAM, GPA + 2 * RAM)


def listener_remove(w: World) -> None:
    space: AddressSpace = w.objects["space"]
    space.remove_ram(space.blocks[0])


def tracker(w: World) -> None:
    t = DirtyTracker(w.objects["space"])
    t.start()
    try:
        t.sync()
    finally:
        t.stop()


DEVICE_OPS: list[tuple[str, Any, Op]] = [
    ("attach", device_world(False), attach),
    ("detach", device_world(True), detach),
    ("dirty start", device_world(True), dirty_start),
    ("dirty harvest", device_world(True, tracking=True), harvest),
    ("dirty stop", device_world(True, tracking=True), dirty_stop),
    ("listener add", device_world(True), listener_add),
    ("listener remove", device_world(True), listener_remove),
    ("tracker", device_world(True), tracker),
]


@pytest.mark.parametrize(("name", "build", "op"), DEVICE_OPS, ids=[d[0] for d in DEVICE_OPS])
def test_device_operations(name: str, build: Any, op: Op) -> None:
    report = drive(build, op)
    assert report.calls >= 1, name
