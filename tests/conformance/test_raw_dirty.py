"""Dirty tracking: SET_DIRTY_TRACKING, GET_DIRTY_BITMAP and the selftest's mock dirty
bitmaps (doc §2.8, §3.1 _test_mock_dirty_bitmaps)."""

from __future__ import annotations

import ctypes
import errno
import mmap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzzing import examples

from .raw import MOCK_PAGE, PAGE, U64_MAX, Iommufd, K, anon, madvise, make

APERTURE_START = K["MOCK_APERTURE_START"]
DIRTY = K["IOMMU_HWPT_ALLOC_DIRTY_TRACKING"]
NO_CLEAR = K["IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR"]
HUGE_IOVA = K["MOCK_FLAGS_DEVICE_HUGE_IOVA"]


class Dirty:
    """The selftest's iommufd_dirty_tracking fixture: an IOAS with a mock domain, a
    buffer mapped at MOCK_APERTURE_START, a dirty-tracking HWPT with a device on it."""

    def __init__(
        self, core: Any | None, buffer_size: int, dev_flags: int = 0, hugepage: bool = False
    ) -> None:
        self.f = Iommufd(core)
        self.ioas = self.f.ioas()
        rc, self.stdev, self.auto_hwpt, self.idev = self.f.mock_domain(self.ioas, dev_flags or None)
        assert rc == 0
        self.size = buffer_size
        self.buffer = anon(buffer_size, align=max(buffer_size, PAGE))
        if hugepage:  # THP-backed, as the selftest's _huge variants use
            madvise(self.buffer, buffer_size, mmap.MADV_HUGEPAGE)
        assert self.f.map(self.ioas, self.buffer, buffer_size, iova=APERTURE_START)[0] == 0
        rc, self.hwpt = self.f.hwpt_alloc(self.idev, self.ioas, DIRTY)
        assert rc == 0
        assert self.f.mock_domain(self.hwpt, dev_flags or None)[0] == 0
        assert self.f.set_dirty(self.hwpt, True) == 0
        self.page_size = MOCK_PAGE
        self.nbits = buffer_size // self.page_size
        self.bitmap_bytes = (self.nbits + 7) // 8
        # Room for the unaligned placements and a guard area after the bitmap.
        self.bitmap_area = anon(2 * PAGE + ((self.bitmap_bytes + 64 + PAGE - 1) & ~(PAGE - 1)))


def bits_of(addr: int, nbits: int) -> int:
    return int.from_bytes(ctypes.string_at(addr, (nbits + 7) // 8), "little")


def put_bits(addr: int, nbits: int, value: int) -> None:
    ctypes.memmove(addr, value.to_bytes((nbits + 7) // 8, "little"), (nbits + 7) // 8)


def mock_dirty_bitmaps(d: Dirty, bitmap: int, pte_page_size: int, flags: int) -> None:
    """_test_mock_dirty_bitmaps from iommufd_utils.h."""
    f, nbits, ps = d.f, d.nbits, d.page_size
    npte = pte_page_size // ps
    pteset = 2 * npte
    pattern = 0
    for i in range(0, nbits, pteset):
        pattern |= 1 << i
    put_bits(bitmap, nbits, pattern)
    rc, s = f.test_cmd(
        "DIRTY", d.hwpt, iova=APERTURE_START, length=d.size, page_size=ps, uptr=bitmap
    )
    assert rc == 0
    assert s.u.dirty.out_nr_dirty == max(nbits // pteset, 1)

    expect = 0
    for i in range(0, nbits, pteset):
        expect |= ((1 << npte) - 1) << i
    expect &= (1 << nbits) - 1
    put_bits(bitmap, nbits, 0)
    assert f.get_dirty(d.hwpt, APERTURE_START, d.size, ps, bitmap, flags) == 0
    assert bits_of(bitmap, nbits) == expect

    put_bits(bitmap, nbits, 0)
    assert f.get_dirty(d.hwpt, APERTURE_START, d.size, ps, bitmap, flags) == 0
    assert bits_of(bitmap, nbits) == (expect if flags & NO_CLEAR else 0)


@pytest.mark.parametrize("buffer_size", [8 << 10, 64 << 10, 2 << 20, 128 << 20])
@pytest.mark.parametrize("flags", [0, NO_CLEAR])
def test_get_dirty_bitmap(mock_core: Any, buffer_size: int, flags: int) -> None:
    d = Dirty(mock_core, buffer_size)
    for offset in (0, MOCK_PAGE, 0xFF1):  # page aligned, PAGE_SIZE unaligned, u64 unaligned
        mock_dirty_bitmaps(d, d.bitmap_area + offset, MOCK_PAGE, flags)


@pytest.mark.parametrize("buffer_size", [2 << 20, 8 << 20])
def test_get_dirty_bitmap_huge_iova(mock_core: Any, buffer_size: int) -> None:
    """With MOCK_FLAGS_DEVICE_HUGE_IOVA a THP-backed, aligned buffer maps with huge
    IOPTEs, and a dirty huge IOPTE reports all of its pages."""
    d = Dirty(mock_core, buffer_size, HUGE_IOVA, hugepage=True)
    for offset in (0, 0xFF1):
        mock_dirty_bitmaps(d, d.bitmap_area + offset, MOCK_PAGE * 512, 0)


def test_small_pages_get_small_ioptes(mock_core: Any) -> None:
    """Without huge pages behind the buffer the memory is not physically contiguous, so even
    a huge-capable domain uses MOCK_PAGE_SIZE IOPTEs (as 6.12.95 does)."""
    d = Dirty(mock_core, 2 << 20, HUGE_IOVA)
    mock_dirty_bitmaps(d, d.bitmap_area, MOCK_PAGE, 0)


def test_bits_are_only_ored_in(mock_core: Any) -> None:
    d = Dirty(mock_core, 64 << 10)
    nbits = d.nbits
    bitmap = d.bitmap_area + 3
    guard = ctypes.string_at(bitmap + d.bitmap_bytes, 64)
    put_bits(bitmap, nbits, 1 << 5)
    d.f.test_cmd(
        "DIRTY", d.hwpt, iova=APERTURE_START, length=d.size, page_size=MOCK_PAGE, uptr=bitmap
    )
    old = 0b1010 << 20
    put_bits(bitmap, nbits, old)
    assert d.f.get_dirty(d.hwpt, APERTURE_START, d.size, MOCK_PAGE, bitmap) == 0
    assert bits_of(bitmap, nbits) == old | (1 << 5)
    assert ctypes.string_at(bitmap + d.bitmap_bytes, 64) == guard


def test_page_size_granularity(mock_core: Any) -> None:
    """A dirty 2048-byte IOPTE read at 4096 sets the one bit covering it; at 1024, two."""
    d = Dirty(mock_core, 64 << 10)
    bm = d.bitmap_area
    put_bits(bm, d.nbits, 0b100)  # IOPTE 2 = bytes [4096, 6144)
    d.f.test_cmd("DIRTY", d.hwpt, iova=APERTURE_START, length=d.size, page_size=MOCK_PAGE, uptr=bm)
    put_bits(bm, 64, 0)
    assert d.f.get_dirty(d.hwpt, APERTURE_START, d.size, 2 * MOCK_PAGE, bm, NO_CLEAR) == 0
    assert bits_of(bm, 64) == 0b10
    put_bits(bm, 64, 0)
    # At 1024 the same IOPTE covers two bits.
    assert d.f.get_dirty(d.hwpt, APERTURE_START, d.size, MOCK_PAGE // 2, bm) == 0
    assert bits_of(bm, 64) == 0b110000
    # A sub-range: bits count from its own start.
    put_bits(d.bitmap_area, 64, 0b1000000)  # IOPTE 6
    d.f.test_cmd("DIRTY", d.hwpt, iova=APERTURE_START, length=d.size, page_size=MOCK_PAGE, uptr=bm)
    put_bits(bm, 64, 0)
    assert d.f.get_dirty(d.hwpt, APERTURE_START + 4 * MOCK_PAGE, 4 * MOCK_PAGE, MOCK_PAGE, bm) == 0
    assert bits_of(bm, 64) == 0b100


def test_set_dirty_tracking(mock_core: Any) -> None:
    d = Dirty(mock_core, 8 << 10)
    f = d.f
    s = make("iommu_hwpt_set_dirty_tracking", hwpt_id=d.hwpt, flags=2)
    assert f.ioctl("IOMMU_HWPT_SET_DIRTY_TRACKING", s) == -errno.EOPNOTSUPP
    s = make("iommu_hwpt_set_dirty_tracking", hwpt_id=d.hwpt, reserved=7)
    assert f.ioctl("IOMMU_HWPT_SET_DIRTY_TRACKING", s) == 0  # __reserved is not checked
    assert f.set_dirty(99, True) == -errno.ENOENT
    assert f.set_dirty(d.ioas, True) == -errno.ENOENT
    assert f.set_dirty(d.auto_hwpt, True) == -errno.EOPNOTSUPP  # no dirty ops
    # DIRTY needs tracking on; enabling starts from a clean snapshot.
    bm = d.bitmap_area
    put_bits(bm, d.nbits, 1)
    assert (
        f.test_cmd(
            "DIRTY", d.hwpt, iova=APERTURE_START, length=d.size, page_size=MOCK_PAGE, uptr=bm
        )[0]
        == -errno.EINVAL
    )
    assert f.set_dirty(d.hwpt, True) == 0
    assert (
        f.test_cmd(
            "DIRTY", d.hwpt, iova=APERTURE_START, length=d.size, page_size=MOCK_PAGE, uptr=bm
        )[1].u.dirty.out_nr_dirty
        == 1
    )
    assert f.set_dirty(d.hwpt, True) == 0
    put_bits(bm, d.nbits, 0)
    assert f.get_dirty(d.hwpt, APERTURE_START, d.size, MOCK_PAGE, bm) == 0
    assert bits_of(bm, d.nbits) == 0
    # Tracking off: the read reports nothing and still succeeds.
    f.test_cmd("DIRTY", d.hwpt, iova=APERTURE_START, length=d.size, page_size=MOCK_PAGE, uptr=bm)
    assert f.set_dirty(d.hwpt, False) == 0
    put_bits(bm, d.nbits, 0)
    assert f.get_dirty(d.hwpt, APERTURE_START, d.size, MOCK_PAGE, bm) == 0
    assert bits_of(bm, d.nbits) == 0


def test_get_dirty_bitmap_check_order(mock_core: Any) -> None:
    d = Dirty(mock_core, 64 << 10)
    f, bm, start, size = d.f, d.bitmap_area, APERTURE_START, d.size

    def call(**kw: int) -> int:
        fields = {
            "hwpt_id": d.hwpt,
            "iova": start,
            "length": size,
            "page_size": MOCK_PAGE,
            "data": bm,
        } | kw
        return f.ioctl("IOMMU_HWPT_GET_DIRTY_BITMAP", make("iommu_hwpt_get_dirty_bitmap", **fields))

    assert call(flags=2, hwpt_id=99) == -errno.EOPNOTSUPP
    assert call(reserved=1, hwpt_id=99) == -errno.EOPNOTSUPP
    assert call(hwpt_id=99, iova=U64_MAX) == -errno.ENOENT
    assert call(hwpt_id=d.ioas) == -errno.ENOENT
    assert call(iova=U64_MAX, length=2, page_size=0) == -errno.EOVERFLOW
    assert call(iova=start + 1024, page_size=0) == -errno.EINVAL  # iova_alignment 2048
    assert call(length=size - 1024, page_size=0) == -errno.EINVAL
    assert call(page_size=0) == -errno.EINVAL
    assert call(page_size=PAGE, iova=start + MOCK_PAGE) == -errno.EINVAL
    assert call(page_size=PAGE, length=size - MOCK_PAGE) == -errno.EINVAL
    assert call(hwpt_id=d.auto_hwpt) == -errno.EOPNOTSUPP
    assert call() == 0


def test_unwritable_bitmap_loses_bits_silently(mock_core: Any) -> None:
    """The bitmap is pinned page by page as bits are set (6.9+): a bad or read-only bitmap
    is no error, its bits are lost, and the IOPTEs' dirty bits are cleared all the same."""
    import mmap

    from .raw import protect, unmap

    d = Dirty(mock_core, 1 << 20)
    f, start, size = d.f, APERTURE_START, d.size
    marks = d.bitmap_area
    put_bits(marks, d.nbits, 0b101)

    def mark() -> None:
        f.test_cmd("DIRTY", d.hwpt, iova=start, length=size, page_size=MOCK_PAGE, uptr=marks)

    out = anon(PAGE)
    for bad in (0, 8):
        mark()
        assert f.get_dirty(d.hwpt, start, size, MOCK_PAGE, bad) == 0
        put_bits(out, d.nbits, 0)
        assert f.get_dirty(d.hwpt, start, size, MOCK_PAGE, out) == 0
        assert bits_of(out, d.nbits) == 0  # consumed by the failed read
    ro = anon(PAGE)
    protect(ro, PAGE, mmap.PROT_READ)
    mark()
    assert f.get_dirty(d.hwpt, start, size, MOCK_PAGE, ro) == 0
    # A bitmap straddling into an unmapped page: the mapped part still gets its bits.
    two = anon(2 * PAGE)
    unmap(two + PAGE, PAGE)
    put_bits(marks, d.nbits, (1 << 3) | (1 << 70))
    mark()
    ctypes.memset(two + PAGE - 8, 0, 8)
    assert f.get_dirty(d.hwpt, start, size, MOCK_PAGE, two + PAGE - 8) == 0
    assert bits_of(two + PAGE - 8, 64) == 1 << 3


def test_walk_stops_at_a_hole(mock_core: Any) -> None:
    """The area walk ends at the first IOVA that no area covers; the call still succeeds."""
    d = Dirty(mock_core, 64 << 10)
    f, bm = d.f, d.bitmap_area
    tail = APERTURE_START + d.size + 4 * MOCK_PAGE  # a second area after a 2-IOPTE hole
    va = anon(8 * MOCK_PAGE)
    assert f.map(d.ioas, va, 8 * MOCK_PAGE, iova=tail)[0] == 0
    span = tail + 8 * MOCK_PAGE - APERTURE_START
    nbits = span // MOCK_PAGE
    put_bits(bm, nbits, (1 << 3) | (1 << (nbits - 1)))
    rc, s = f.test_cmd(
        "DIRTY", d.hwpt, iova=APERTURE_START, length=span, page_size=MOCK_PAGE, uptr=bm
    )
    assert (rc, s.u.dirty.out_nr_dirty) == (0, 2)
    put_bits(bm, nbits, 0)
    assert f.get_dirty(d.hwpt, APERTURE_START, span, MOCK_PAGE, bm, NO_CLEAR) == 0
    assert bits_of(bm, nbits) == 1 << 3
    put_bits(bm, nbits, 0)
    assert f.get_dirty(d.hwpt, tail, 8 * MOCK_PAGE, MOCK_PAGE, bm) == 0
    assert bits_of(bm, 8) == 1 << 7
    # Starting inside the hole finds nothing at all.
    put_bits(bm, nbits, 0)
    assert f.get_dirty(d.hwpt, tail - 2 * MOCK_PAGE, 10 * MOCK_PAGE, MOCK_PAGE, bm) == 0
    assert bits_of(bm, 10) == 0


def test_dirty_op_checks(mock_core: Any) -> None:
    d = Dirty(mock_core, 8 << 10)
    f, bm = d.f, d.bitmap_area

    def dirty(obj: int | None = None, **kw: int) -> int:
        p = {"iova": APERTURE_START, "length": d.size, "page_size": MOCK_PAGE, "uptr": bm} | kw
        return f.test_cmd("DIRTY", d.hwpt if obj is None else obj, **p)[0]

    for kw in (
        {"page_size": 0},
        {"length": 0},
        {"uptr": 0},
        {"iova": APERTURE_START + 1},
        {"length": d.size + 1},
    ):
        assert dirty(obj=99, **kw) == -errno.EINVAL, kw
    assert dirty(obj=99) == -errno.ENOENT
    assert dirty(obj=d.ioas) == -errno.ENOENT
    assert dirty(uptr=8) == -errno.EFAULT
    assert f.test_cmd("MD_CHECK_REFS", d.hwpt)[0] == 0  # modelled: an empty range checks out


@settings(max_examples=examples(60), deadline=None)
@given(
    marks=st.lists(st.integers(0, 511), max_size=40),
    span=st.tuples(st.integers(0, 255), st.integers(1, 256)),
    page_shift=st.sampled_from([11, 12, 13]),
    offset=st.sampled_from([0, 3, 0xFF1]),
)
def test_harvest_matches_reference(
    marks: list[int], span: tuple[int, int], page_shift: int, offset: int
) -> None:
    """Random dirty 2 KiB IOPTEs read back at 2, 4 and 8 KiB over random sub-ranges: bit i
    is set iff an IOPTE inside page i of the range is dirty."""
    d = _DIRTY_1M
    f, start = d.f, APERTURE_START
    ps = 1 << page_shift
    first_page, npages = span
    iova = start + first_page * ps
    npages = min(npages, (d.size - first_page * ps) // ps)
    if npages <= 0:
        return
    put_bits(d.bitmap_area, d.nbits, sum(1 << m for m in set(marks)))
    assert f.get_dirty(d.hwpt, start, d.size, MOCK_PAGE, anon(PAGE)) == 0  # start clean
    f.test_cmd("DIRTY", d.hwpt, iova=start, length=d.size, page_size=MOCK_PAGE, uptr=d.bitmap_area)
    out = anon(2 * PAGE) + offset
    put_bits(out, npages, 0)
    assert f.get_dirty(d.hwpt, iova, npages * ps, ps, out) == 0
    want = 0
    for m in set(marks):
        page = (start + m * MOCK_PAGE - iova) // ps
        if 0 <= page < npages and start + m * MOCK_PAGE >= iova:
            want |= 1 << page
    assert bits_of(out, npages) == want


# One simulator for all examples (a fixture would be rebuilt per example): sim only.
_DIRTY_1M = Dirty(None, 1 << 20)
