"""fastmap.dirty.DirtyHarvester against a kernel (the simulator, or a real one in the VM).

The selftest mock domain plays the device: IOMMU_TEST_OP_DIRTY marks the IOPTEs of a
pattern dirty, and the harvest must return exactly that pattern, expanded or reduced to
the requested page size (the mock's IOPTEs are MOCK_PAGE_SIZE, half a CPU page), ORed over
the HWPTs, cleared by a read unless NO_CLEAR.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conformance.helpers import (
    MOCK_PAGE_SIZE,
    Buffer,
    destroy,
    hugepage_size,
    hwpt_alloc,
    ioas_alloc,
    ioas_map,
    mock_domain,
    mock_set_dirty,
    set_dirty_tracking,
)
from tests.fuzzing import examples

from fastmap import bitmap, uapi
from fastmap.dirty import DirtyHarvester
from fastmap.errors import KernelError, NotFoundError
from fastmap.kernel import Fd, Kernel

IOVA = uapi.MOCK_APERTURE_START
LENGTH = 1 << 20  # 512 mock IOPTEs
PTES = LENGTH // MOCK_PAGE_SIZE

pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)


@dataclass
class Tracked:
    """A buffer mapped at IOVA in an IOAS with two dirty-tracking HWPTs (one mock device
    each, tracking on)."""

    kernel: Kernel
    fd: Fd
    ioas: int
    hwpts: list[int]

    def mark(self, hwpt: int, ptes: np.ndarray, iova: int = IOVA) -> int:
        """Marks IOPTE i of [iova, ...) dirty for every true ptes[i]; returns how many."""
        words = np.packbits(ptes.astype(np.uint8), bitorder="little")
        words = np.concatenate([words, np.zeros(-len(words) % 8, np.uint8)]).view("<u8")
        marks = np.ascontiguousarray(words, dtype=np.uint64)
        return mock_set_dirty(
            self.fd, hwpt, iova, len(ptes) * MOCK_PAGE_SIZE, MOCK_PAGE_SIZE, marks.ctypes.data
        )


@pytest.fixture
def tracked(kernel: Kernel, iommufd: Fd, selftest: bool) -> Iterator[Tracked]:
    with Buffer(LENGTH, align=hugepage_size()) as buf:
        dev_ioas = ioas_alloc(iommufd)
        dev_stdev, _, idev = mock_domain(iommufd, dev_ioas)
        ioas = ioas_alloc(iommufd)
        ioas_map(iommufd, ioas, buf.addr, LENGTH, IOVA)
        hwpts, stdevs = [], []
        for _ in range(2):
            hwpt = hwpt_alloc(iommufd, idev, ioas, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
            stdevs.append(mock_domain(iommufd, hwpt)[0])
            set_dirty_tracking(iommufd, hwpt, True)
            hwpts.append(hwpt)
        yield Tracked(kernel, iommufd, ioas, hwpts)
        for obj in [*stdevs, *hwpts, ioas, dev_stdev, dev_ioas]:
            destroy(iommufd, obj)


def expected(ptes: np.ndarray, page_size: int) -> np.ndarray:
    """The bitmap a read at page_size gives for dirty IOPTEs `ptes` (MOCK_PAGE_SIZE each):
    a page is dirty if any IOPTE in it is; a dirty IOPTE dirties every page inside it."""
    if page_size >= MOCK_PAGE_SIZE:
        r = page_size // MOCK_PAGE_SIZE
        padded = np.concatenate([ptes, np.zeros(-len(ptes) % r, bool)])
        bits = padded.reshape(-1, r).any(axis=1)
    else:
        bits = np.repeat(ptes, MOCK_PAGE_SIZE // page_size)
    packed = np.packbits(bits.astype(np.uint8), bitorder="little")
    packed = np.concatenate([packed, np.zeros(-len(packed) % 8, np.uint8)])
    return packed.view("<u8").astype(np.uint64)


def pattern(seed: int, density: float, n: int = PTES) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < density


PAGE_SIZES = [MOCK_PAGE_SIZE // 2, MOCK_PAGE_SIZE, 2 * MOCK_PAGE_SIZE, 64 * MOCK_PAGE_SIZE]


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_harvest_returns_the_marked_pages(tracked: Tracked, page_size: int) -> None:
    hwpt = tracked.hwpts[0]
    ptes = pattern(1, 0.3)
    assert tracked.mark(hwpt, ptes) == ptes.sum()
    result = DirtyHarvester(tracked.kernel, tracked.fd).harvest([hwpt], [(IOVA, LENGTH)], page_size)
    assert len(result.bitmaps) == 1
    np.testing.assert_array_equal(result.bitmaps[0], expected(ptes, page_size))
    assert result.dirty_pages() == bitmap.popcount(expected(ptes, page_size))


def test_a_read_clears_unless_no_clear(tracked: Tracked) -> None:
    hwpt = tracked.hwpts[0]
    ptes = pattern(2, 0.1)
    tracked.mark(hwpt, ptes)
    harvester = DirtyHarvester(tracked.kernel, tracked.fd)
    want = expected(ptes, MOCK_PAGE_SIZE)
    for _ in range(2):  # NO_CLEAR: the same bits every time
        kept = harvester.harvest([hwpt], [(IOVA, LENGTH)], MOCK_PAGE_SIZE, no_clear=True)
        np.testing.assert_array_equal(kept.bitmaps[0], want)
    first = harvester.harvest([hwpt], [(IOVA, LENGTH)], MOCK_PAGE_SIZE)
    np.testing.assert_array_equal(first.bitmaps[0], want)
    second = harvester.harvest([hwpt], [(IOVA, LENGTH)], MOCK_PAGE_SIZE)
    assert not second.bitmaps[0].any()
    assert second.dirty_pages() == 0


def test_two_hwpts_are_ored(tracked: Tracked) -> None:
    a, b = pattern(3, 0.2), pattern(4, 0.2)
    assert (a & b).any() and (a & ~b).any() and (b & ~a).any()  # overlapping, not equal
    tracked.mark(tracked.hwpts[0], a)
    tracked.mark(tracked.hwpts[1], b)
    harvester = DirtyHarvester(tracked.kernel, tracked.fd)
    result = harvester.harvest(tracked.hwpts, [(IOVA, LENGTH)], 4096, no_clear=True)
    np.testing.assert_array_equal(result.bitmaps[0], expected(a | b, 4096))
    # Either order, and each alone, agree with its own pattern.
    reverse = harvester.harvest(tracked.hwpts[::-1], [(IOVA, LENGTH)], 4096, no_clear=True)
    np.testing.assert_array_equal(reverse.bitmaps[0], result.bitmaps[0])
    only_b = harvester.harvest(tracked.hwpts[1:], [(IOVA, LENGTH)], 4096)
    np.testing.assert_array_equal(only_b.bitmaps[0], expected(b, 4096))


def test_several_ranges_and_a_hole(tracked: Tracked) -> None:
    ptes = pattern(5, 0.5)
    tracked.mark(tracked.hwpts[0], ptes)
    half = LENGTH // 2
    # Two halves of the mapping, an odd-sized tail piece, and unmapped IOVA after it.
    ranges = [
        (IOVA, half),
        (IOVA + half, half - 3 * MOCK_PAGE_SIZE),
        (IOVA + LENGTH - 3 * MOCK_PAGE_SIZE, 3 * MOCK_PAGE_SIZE),
        (IOVA + LENGTH, LENGTH),
    ]
    h = DirtyHarvester(tracked.kernel, tracked.fd)
    result = h.harvest([tracked.hwpts[0]], ranges, MOCK_PAGE_SIZE)
    p = half // MOCK_PAGE_SIZE
    np.testing.assert_array_equal(result.bitmaps[0], expected(ptes[:p], MOCK_PAGE_SIZE))
    np.testing.assert_array_equal(result.bitmaps[1], expected(ptes[p:-3], MOCK_PAGE_SIZE))
    np.testing.assert_array_equal(result.bitmaps[2], expected(ptes[-3:], MOCK_PAGE_SIZE))
    assert result.bitmaps[3].shape == (PTES // 64,) and not result.bitmaps[3].any()
    assert [len(b) for b in result.bitmaps] == [4, 4, 1, 8]
    # The runs, in IOVA bytes, are the marked IOPTEs.
    runs = result.dirty_iova_ranges()
    marked = np.zeros(PTES, bool)
    for iova, length in runs:
        first = (int(iova) - IOVA) // MOCK_PAGE_SIZE
        marked[first : first + int(length) // MOCK_PAGE_SIZE] = True
    np.testing.assert_array_equal(marked, ptes)


def test_out_buffer_is_zeroed_and_reused(tracked: Tracked) -> None:
    ptes = pattern(6, 0.05)
    tracked.mark(tracked.hwpts[0], ptes)
    h = DirtyHarvester(tracked.kernel, tracked.fd)
    out = h.buffer([(IOVA, LENGTH)], MOCK_PAGE_SIZE)
    out[:] = np.uint64((1 << 64) - 1)  # stale bits from an earlier sync
    result = h.harvest([tracked.hwpts[0]], [(IOVA, LENGTH)], MOCK_PAGE_SIZE, out=out)
    assert result.buffer is out and np.shares_memory(result.bitmaps[0], out)
    np.testing.assert_array_equal(out, expected(ptes, MOCK_PAGE_SIZE))


def test_partial_last_word_is_sized_and_clean(tracked: Tracked) -> None:
    ptes = np.ones(100, bool)  # 100 IOPTEs: two words, 36 unused bits
    tracked.mark(tracked.hwpts[0], ptes)
    out = np.full(2, (1 << 64) - 1, dtype=np.uint64)
    h = DirtyHarvester(tracked.kernel, tracked.fd)
    result = h.harvest([tracked.hwpts[0]], [(IOVA, 100 * MOCK_PAGE_SIZE)], MOCK_PAGE_SIZE, out=out)
    assert result.bitmaps[0].tolist() == [(1 << 64) - 1, (1 << 36) - 1]
    assert bitmap.to_ranges(result.bitmaps[0], result.nbits(0)).tolist() == [[0, 100]]


def test_first_failure_names_hwpt_and_range(tracked: Tracked) -> None:
    h = DirtyHarvester(tracked.kernel, tracked.fd)
    with pytest.raises(NotFoundError) as info:
        h.harvest([tracked.hwpts[0], 0xFFFF], [(IOVA, LENGTH)], MOCK_PAGE_SIZE)
    assert info.value.errno == errno.ENOENT
    assert info.value.arguments["hwpt_id"] == 0xFFFF
    assert info.value.arguments["range_index"] == 0
    # Aligned to page_size but not to the IOAS's IOVA alignment (the mock IOPTE): the
    # kernel refuses range 1, after range 0 succeeded.
    small = MOCK_PAGE_SIZE // 2
    with pytest.raises(KernelError) as later:
        h.harvest(tracked.hwpts, [(IOVA, LENGTH), (IOVA + small, 4 * small)], small)
    assert later.value.errno == errno.EINVAL
    assert later.value.arguments["range_index"] == 1
    assert later.value.arguments["hwpt_id"] == tracked.hwpts[0]
    assert "IOMMU_HWPT_GET_DIRTY_BITMAP" in str(later.value)


def test_tracking_off_reports_nothing(tracked: Tracked) -> None:
    hwpt = tracked.hwpts[0]
    tracked.mark(hwpt, pattern(7, 0.5))
    set_dirty_tracking(tracked.fd, hwpt, False)
    result = DirtyHarvester(tracked.kernel, tracked.fd).harvest([hwpt], [(IOVA, LENGTH)])
    assert not result.bitmaps[0].any()


@settings(
    max_examples=examples(25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    density=st.sampled_from([0.0, 0.01, 0.5, 1.0]),
    page_size=st.sampled_from(PAGE_SIZES),
    first=st.integers(0, PTES - 1),
    data=st.data(),
)
def test_random_patterns_and_windows(
    tracked: Tracked, seed: int, density: float, page_size: int, first: int, data: st.DataObject
) -> None:
    # Any IOPTE-aligned window of the mapping, at any page size that divides it.
    step = max(1, page_size // MOCK_PAGE_SIZE)
    first -= first % step
    count = data.draw(st.integers(1, (PTES - first) // step)) * step
    ptes = pattern(seed, density)
    tracked.mark(tracked.hwpts[1], ptes)
    h = DirtyHarvester(tracked.kernel, tracked.fd)
    window = (IOVA + first * MOCK_PAGE_SIZE, count * MOCK_PAGE_SIZE)
    result = h.harvest(tracked.hwpts, [window], page_size)
    np.testing.assert_array_equal(
        result.bitmaps[0], expected(ptes[first : first + count], page_size)
    )
    h.harvest(tracked.hwpts, [(IOVA, LENGTH)], MOCK_PAGE_SIZE)  # clear for the next example


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hwpt_ids": []}, "hwpt_ids: expected at least one"),
        ({"hwpt_ids": [0]}, r"hwpt_ids: expected object ids in \[1, 2\*\*32\), got 0"),
        ({"page_size": 3000}, "page_size: expected a power of two, got 3000"),
        ({"ranges": [(IOVA, 0)]}, r"ranges: row 0 \(iova=0x1000000, length=0x0\) is empty"),
        ({"ranges": [(IOVA + 512, 4096)]}, "is not a multiple of page_size=0x1000"),
        ({"ranges": [(2**64 - 4096, 8192)]}, "outside the 64-bit IOVA space"),
        ({"out": np.zeros(3, dtype=np.uint64)}, "out: the bitmaps need 4 words, out has 3"),
        ({"out": np.zeros(4, dtype=np.int64)}, "out: expected a writable contiguous"),
    ],
)
def test_bad_arguments(tracked: Tracked, kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "hwpt_ids": tracked.hwpts,
        "ranges": [(IOVA, LENGTH)],
        "page_size": 4096,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        DirtyHarvester(tracked.kernel, tracked.fd).harvest(**args)  # type: ignore[arg-type]
