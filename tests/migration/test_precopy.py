"""Pre-copy live migration: the loop converges, the destination matches the source byte for
byte, and the check fails when dirty pages are lost (so it can fail)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import ModuleType

import numpy as np
import pytest

from fastmap._tools.dma_writer import DeviceWriter, MockDeviceWriter, SimDeviceWriter
from fastmap._tools.mock_device import MockDevice
from fastmap._tools.precopy import Precopy, Round
from fastmap.cli import main as cli_main
from fastmap.errors import DirtyTrackingWarning
from fastmap.kernel import Kernel
from fastmap.lifecycle.address_space import AddressSpace
from fastmap.lifecycle.backend import IOMMUFDBackend
from fastmap.lifecycle.device import VFIODevice
from fastmap.migration import BlockDirty, DirtyTracker, SyncResult, UntrackedDevicesWarning
from tests.facilities import only_on_sim
from tests.migration.conftest import GPA, PAGE, add_sim_device, dirty_edu
from tests.script_module import ROOT, load_script

SIZES = (2 << 20, 1 << 20)
HOT = 48  # pages the device writes: at most this many can be dirty in a round


def fill(space: AddressSpace, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for b in space.blocks:
        b.write(0, rng.integers(0, 256, b.length, np.uint8).tobytes())


@pytest.fixture
def guest(kernel: Kernel) -> Iterator[tuple[AddressSpace, VFIODevice]]:
    """Two blocks of random bytes; an edu behind VT-d with dirty tracking (simulator)."""
    with dirty_edu(kernel) as (space, dev):
        gpa = GPA
        for n in SIZES:
            space.add_ram(n, gpa)
            gpa += n
        fill(space, 11)
        dev.enable_dma()
        yield space, dev


def after_round_0(writer: DeviceWriter, then_stop: bool = False) -> Callable[[Round], None]:
    """A round callback that, after round 0 (its copy is done), waits until the device has
    written 20 more pages (so the next sync has something to find however the threads are
    scheduled), optionally stopping it then."""
    rounds: list[Round] = []

    def on_round(r: Round) -> None:
        rounds.append(r)
        if r.index == 0:
            end = time.monotonic() + 30
            target = writer.stats.pages + 20
            while writer.stats.pages < target:
                assert time.monotonic() < end, "the device wrote nothing"
                time.sleep(0.002)
            if then_stop:
                writer.stop()

    on_round.rounds = rounds  # type: ignore[attr-defined]
    return on_round


def hot_range(space: AddressSpace) -> list[tuple[int, int]]:
    b = space.blocks[1]
    return [(b.gpa + 16 * PAGE, HOT * PAGE)]


@only_on_sim
def test_precopy_converges_and_matches(
    guest: tuple[AddressSpace, VFIODevice], kernel: Kernel
) -> None:
    space, dev = guest
    writer = SimDeviceWriter(kernel, dev.name, hot_range(space), 20_000, seed=2)
    on_round = after_round_0(writer)
    rounds: list[Round] = on_round.rounds  # type: ignore[attr-defined]
    pre = Precopy(space, DirtyTracker(space), bandwidth=256 << 20, threshold_pages=HOT)
    report = pre.run(writer, on_round)
    # Round 0 sends everything; no round can find more than the hot pages, so the first
    # sync is already under the threshold.
    assert rounds == report.rounds and rounds[0].bytes_sent == sum(SIZES)
    assert report.converged and len(rounds) == 2 and rounds[1].dirty_pages <= HOT
    assert report.device_pages > 0 and report.device_faults == 0
    assert report.stale_all_covered and report.mismatches == [] and report.ok
    for b in space.blocks:
        assert pre.dest[b.name].tobytes() == b.read(0, b.length)


@only_on_sim
def test_precopy_without_convergence_still_matches(
    guest: tuple[AddressSpace, VFIODevice], kernel: Kernel
) -> None:
    """Rounds that never get below the threshold (-1: never) run out, and stop-and-copy
    still leaves an exact copy."""
    space, dev = guest
    ranges = [(b.gpa, b.length) for b in space.blocks]
    writer = SimDeviceWriter(kernel, dev.name, ranges, 50_000, seed=3)
    pre = Precopy(space, DirtyTracker(space), bandwidth=64 << 20, threshold_pages=-1, max_rounds=3)
    report = pre.run(writer, after_round_0(writer))
    assert not report.converged and len(report.rounds) == 4
    assert report.ok and report.device_pages >= 20


@only_on_sim
def test_untracked_device_means_resending_everything(
    guest: tuple[AddressSpace, VFIODevice], kernel: Kernel
) -> None:
    space, dev = guest
    plain = VFIODevice(add_sim_device(kernel, iommu="vtd", dirty=False), kernel=kernel)
    with pytest.warns(DirtyTrackingWarning):
        plain.attach(space, dev.backend)
    writer = SimDeviceWriter(kernel, dev.name, hot_range(space), 5_000)
    pre = Precopy(space, DirtyTracker(space), threshold_pages=HOT, max_rounds=2)
    with pytest.warns(UntrackedDevicesWarning):
        report = pre.run(writer)
    pages = sum(SIZES) // PAGE
    assert [r.dirty_pages for r in report.rounds] == [pages] * 3
    assert all(r.all_dirty for r in report.rounds[1:]) and not report.converged
    assert report.ok
    plain.detach()


class LossyTracker(DirtyTracker):
    """A broken tracker whose first sync loses everything it harvested."""

    syncs = 0

    def sync(self) -> SyncResult:
        r = super().sync()
        self.syncs += 1
        if self.syncs > 1:
            return r
        empty = [
            BlockDirty(d.block, d.page_size, np.zeros_like(d.bitmap), d.nbits) for d in r.blocks
        ]
        return SyncResult(r.page_size, empty, r.removed)


@only_on_sim
def test_lost_dirty_pages_are_caught(
    guest: tuple[AddressSpace, VFIODevice], kernel: Kernel
) -> None:
    """Control: with a tracker that loses the writes made after round 0's copy, the
    verification finds the difference (the device stops before they could be rewritten and
    reported again)."""
    space, dev = guest
    writer = SimDeviceWriter(kernel, dev.name, hot_range(space), 20_000, seed=4)
    pre = Precopy(space, LossyTracker(space), bandwidth=256 << 20, threshold_pages=HOT)
    report = pre.run(writer, after_round_0(writer, then_stop=True))
    assert not report.ok and not report.stale_all_covered
    assert report.stale_pages >= 1 and sum(n for _, n in report.mismatches) >= 1


def test_precopy_with_the_mock_device(kernel: Kernel, mock_ok: None) -> None:
    """The same loop over the selftest mock device: on the VM's real kernel the dirty bits
    and their harvest are the kernel's (the writes are emulated, see fastmap._tools.dma_writer)."""
    with (
        AddressSpace() as space,
        IOMMUFDBackend(kernel=kernel) as be,
        MockDevice(kernel=kernel).attach(space, be) as dev,
    ):
        gpa = GPA
        for n in SIZES:
            space.add_ram(n, gpa)
            gpa += n
        fill(space, 12)
        writer = MockDeviceWriter(dev, hot_range(space), 5_000, seed=6)
        pre = Precopy(space, DirtyTracker(space), threshold_pages=HOT)
        report = pre.run(writer, after_round_0(writer))
        assert report.converged and report.ok and report.device_pages >= 20
        for b in space.blocks:
            assert pre.dest[b.name].tobytes() == b.read(0, b.length)


# --- the demo -------------------------------------------------------------------------------------
DEMO_ARGS = ["--ram-mib", "4", "4", "--rate", "20000", "--bandwidth", "256", "--max-rounds", "8"]


@pytest.mark.parametrize("device", ["edu", "mock"])
def test_migrate_demo(device: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--kernel", "sim", "migrate-demo", "--device", device, *DEMO_ARGS]) == 0
    out = capsys.readouterr().out
    assert "RESULT migrate-demo OK" in out and "destination == source" in out
    assert "all of them reported dirty" in out


def load_example() -> ModuleType:
    return load_script(ROOT / "examples" / "precopy.py", "fastmap_example_precopy")


def test_precopy_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_example().main(["--huge-iopte", *DEMO_ARGS]) == 0
    assert "RESULT migrate-demo OK" in capsys.readouterr().out


def test_demo_on_the_real_kernel(kernel: Kernel, mock_ok: None) -> None:
    """`fastmap --kernel real migrate-demo` in the VM (the mock device); on the sim the same
    code runs with the mock device too."""
    if kernel.name != "real":
        pytest.skip("the simulator runs the demo in test_migrate_demo")
    out: list[str] = []
    from fastmap._tools.precopy import DemoOptions, run_demo

    opts = DemoOptions(kernel="real", device="mock", ram_mib=(8,), rate=2000, max_rounds=5)
    assert run_demo(opts, out.append) == 0, "\n".join(out)
    assert "RESULT migrate-demo OK" in out[-1]
