"""The simulated IOMMU: IommuModel factories and Domain (IOPTEs, DMA, faults, dirty bits).

Page-size choice and dirty reporting are checked against a small Python reference model
of iommu_map/iommu_unmap (one entry per IOPTE), including randomized operation sequences.
"""

from __future__ import annotations

import errno
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conformance.raw import PAGE, Buf
from tests.fuzzing import examples

from fastmap import _core

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
R, W = 1, 2


# -- reference model ----------------------------------------------------------------------
def ref_pages(
    bitmap: int, iova: int, va: int, length: int, largest: bool = True
) -> list[tuple[int, int, int]]:
    """iommu_map's split of [iova, iova+length) into (iova, va, size) IOPTEs."""
    out = []
    smallest = bitmap & -bitmap
    while length:
        if largest:
            sizes = [1 << b for b in range(64) if bitmap >> b & 1]
            ok = [s for s in sizes if s <= length and (iova | va) % s == 0]
            size = max(ok)
        else:
            size = smallest
        out.append((iova, va, size))
        iova, va, length = iova + size, va + size, length - size
    return out


class RefDomain:
    def __init__(self, bitmap: int) -> None:
        self.bitmap = bitmap
        self.ptes: dict[int, list] = {}  # iova -> [size, va, prot, dirty]
        self.tracking = False

    def map(self, iova: int, va: int, length: int, prot: int, largest: bool = True) -> None:
        for a, v, s in ref_pages(self.bitmap, iova, va, length, largest):
            self.ptes[a] = [s, v, prot, False]

    def overlaps(self, iova: int, length: int) -> bool:
        return any(a < iova + length and iova < a + p[0] for a, p in self.ptes.items())

    def unmap(self, iova: int, length: int) -> int:
        gone = [a for a, p in self.ptes.items() if a < iova + length and iova < a + p[0]]
        return sum(self.ptes.pop(a)[0] for a in gone)

    def write(self, iova: int, n: int) -> bool:
        """True when every byte is mapped writable; sets dirty bits of IOPTEs written."""
        for a, p in self.ptes.items():
            if a < iova + n and iova < a + p[0] and p[2] & W:
                p[3] = p[3] or self.tracking
        covered = sum(
            min(a + p[0], iova + n) - max(a, iova)
            for a, p in self.ptes.items()
            if a < iova + n and iova < a + p[0] and p[2] & W
        )
        return covered == n

    def harvest(self, iova: int, length: int, no_clear: bool) -> list[tuple[int, int]]:
        if not self.tracking:
            return []
        last = iova + length - 1
        out: list[tuple[int, int]] = []
        for a in sorted(self.ptes):
            p = self.ptes[a]
            if not p[3] or a > last or a + p[0] - 1 < iova:
                continue
            lo, hi = max(a, iova), min(a + p[0] - 1, last)
            if out and out[-1][1] + 1 == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
            if not no_clear:
                p[3] = False
        return out


# -- IommuModel ---------------------------------------------------------------------------
def test_vtd_model_matches_qemu_intel_iommu() -> None:
    for dirty in (False, True):
        m = _core.IommuModel.vtd(dirty)
        assert m.kind == "vtd"
        assert (m.aperture_start, m.aperture_last) == (0, (1 << 48) - 1)
        assert m.reserved == [(0xFEE00000, 0xFEEFFFFF)]
        assert m.pgsize_bitmap == 4 * KIB | 2 * MIB | 1 * GIB
        assert m.dirty_tracking is dirty
        assert m.hw_info_type == _core.uapi_constants()["IOMMU_HW_INFO_TYPE_INTEL_VTD"]
        flags, _res, cap, ecap = struct.unpack("<IIQQ", m.hw_info)
        assert flags == 0
        assert ((cap >> 16) & 0x3F) + 1 == 48  # MGAW
        assert (cap >> 8) & 0x1F & 0x4  # SAGAW: 4-level (48-bit) tables
        assert (cap >> 34) & 3 == 3  # SLLPS: 2 MiB and 1 GiB pages
        assert bool((ecap >> 45) & 1) is dirty  # SLADS: second-stage A/D bits
        assert bool((ecap >> 43) & 1) is dirty  # SMTS: scalable mode


def test_mock_model_matches_selftest() -> None:
    m = _core.IommuModel.mock(True)
    assert m.kind == "mock"
    assert (m.aperture_start, m.aperture_last) == (1 << 24, (1 << 31) - 1)
    assert m.reserved == []
    assert m.pgsize_bitmap == (PAGE // 2) | (PAGE // 2 * 512)
    assert m.hw_info_type == 0xFEEDBEEF
    assert struct.unpack("<II", m.hw_info) == (0, 0xDEADBEEF)
    assert _core.IommuModel.mock(False).dirty_tracking is False


# -- map / unmap --------------------------------------------------------------------------
def test_map_uses_largest_aligned_pages() -> None:
    d = _core.SimDomain(_core.IommuModel.vtd(False))
    va = 64 * GIB  # map() does not touch memory; only alignment matters
    assert d.map(0x1000, va + 0x1000, 2 * MIB - 0x1000 + 4 * MIB + 0x3000) == 0
    assert d.iopte_size(0x1000) == 4 * KIB
    assert d.iopte_size(2 * MIB) == 2 * MIB
    assert d.iopte_size(4 * MIB) == 2 * MIB
    assert d.iopte_size(6 * MIB) == 4 * KIB
    assert d.iopte_count == 511 + 2 + 3
    # VA not congruent to IOVA modulo 2 MiB: only 4 KiB IOPTEs possible.
    d2 = _core.SimDomain(_core.IommuModel.vtd(False))
    assert d2.map(0, va + 0x1000, 4 * MIB) == 0
    assert d2.iopte_size(2 * MIB) == 4 * KIB and d2.iopte_count == 1024


def test_map_smallest_pages_when_asked() -> None:
    d = _core.SimDomain(_core.IommuModel.vtd(False))
    assert d.map(0, 1 * GIB, 1 * GIB, largest_pages=False) == 0
    assert d.iopte_size(0) == 4 * KIB and d.iopte_count == GIB // (4 * KIB)
    assert d.run_count == 1


@settings(max_examples=examples(200), deadline=None)
@given(
    iova_pages=st.integers(0, 3 << 18),
    va_pages=st.integers(0, 3 << 18),
    npages=st.integers(1, 1 << 19),
    largest=st.booleans(),
)
def test_map_page_choice_matches_iommu_pgsize(
    iova_pages: int, va_pages: int, npages: int, largest: bool
) -> None:
    m = _core.IommuModel.vtd(False)
    d = _core.SimDomain(m)
    # The reference keeps one entry per IOPTE: bound the count where small pages dominate.
    if not largest or (iova_pages ^ va_pages) % 512:
        npages = min(npages, 4096)
    elif (iova_pages ^ va_pages) % (512 * 512):
        npages = min(npages, 512 * 64)
    iova, va, length = iova_pages * 4096, (1 << 40) + va_pages * 4096, npages * 4096
    assert d.map(iova, va, length, 3, largest) == 0
    ref = ref_pages(m.pgsize_bitmap, iova, va, length, largest)
    assert d.iopte_count == len(ref)
    assert d.mapped_bytes == length
    for a, v, s in ref[:64] + ref[-64:]:
        assert d.iopte_size(a) == s
        assert d.translate(a + s - 1, 0) == v + s - 1


def test_map_errors() -> None:
    d = _core.SimDomain(_core.IommuModel.vtd(False))
    assert d.map(0x1000, 0x10000, 0) == -errno.EINVAL
    assert d.map(0x1800, 0x10000, 0x1000) == -errno.EINVAL  # misaligned iova
    assert d.map(0x1000, 0x10800, 0x1000) == -errno.EINVAL  # misaligned va
    assert d.map(1 << 48, 0x10000, 0x1000) == -errno.EINVAL  # beyond the aperture
    assert d.map((1 << 48) - 0x1000, 0x10000, 0x2000) == -errno.EINVAL
    assert d.map(0x10000, 0x10000, 0x4000) == 0
    assert d.map(0xF000, 0x20000, 0x2000) == -errno.EEXIST
    assert d.map(0x13000, 0x20000, 0x1000) == -errno.EEXIST
    mock = _core.SimDomain(_core.IommuModel.mock(True))
    assert mock.min_page_size == PAGE // 2
    assert mock.map(0, 0x10000, PAGE) == -errno.EINVAL  # below 1 << 24
    assert mock.map(1 << 24, 0x10000 + PAGE // 2, PAGE // 2) == 0


def test_unmap_removes_whole_ioptes_and_reports_bytes() -> None:
    d = _core.SimDomain(_core.IommuModel.vtd(False))
    assert d.map(0, 1 * GIB, 8 * MIB) == 0  # four 2 MiB IOPTEs
    assert d.unmap(2 * MIB + 0x1000, 0x1000) == 2 * MIB  # cutting into one drops it
    assert d.iopte_size(2 * MIB) == 0 and d.iopte_size(4 * MIB) == 2 * MIB
    assert d.unmap(0, 16 * MIB) == 6 * MIB  # holes are skipped
    assert d.mapped_bytes == 0 and d.run_count == 0
    assert d.unmap(0, 1 * MIB) == 0


# -- DMA ----------------------------------------------------------------------------------
@pytest.fixture()
def buf() -> Buf:
    b = Buf(4 * MIB, align=2 * MIB)
    yield b
    b.free()


def test_dma_moves_bytes_both_ways(buf: Buf) -> None:
    d = _core.SimDomain(_core.IommuModel.vtd(False))
    assert d.map(0x100000, buf.addr, 2 * PAGE) == 0
    pattern = bytes(range(256)) * 16
    assert d.dma_write(0x100000 + 100, pattern) == 0
    assert buf.read(len(pattern), 100) == pattern
    buf.write(b"hello", 2 * PAGE - 2)  # spans the two IOPTEs
    rc, data = d.dma_read(0x100000 + 2 * PAGE - 2, 2)
    assert (rc, data) == (0, b"he")
    assert d.take_faults() == []


def test_dma_fault_unmapped_leaves_memory_untouched(buf: Buf) -> None:
    d = _core.SimDomain(_core.IommuModel.vtd(False))
    buf.write(b"\xaa" * PAGE)
    assert d.dma_write(0x200000, b"\x55" * PAGE) == -errno.EFAULT
    assert buf.read(PAGE) == b"\xaa" * PAGE
    assert d.take_faults() == [(0x200000, True, -errno.EFAULT)]
    rc, data = d.dma_read(0x200000, 16)
    assert (rc, data) == (-errno.EFAULT, bytes(16))
    assert d.take_faults() == [(0x200000, False, -errno.EFAULT)]


def test_dma_partial_fault_transfers_mapped_part(buf: Buf) -> None:
    d = _core.SimDomain(_core.IommuModel.vtd(False))
    assert d.map(0x100000, buf.addr, PAGE) == 0
    buf.write(b"\0" * PAGE)
    assert d.dma_write(0x100000 + PAGE - 4, b"ABCDEFGH") == -errno.EFAULT
    assert buf.read(4, PAGE - 4) == b"ABCD"
    assert d.take_faults() == [(0x100000 + PAGE, True, -errno.EFAULT)]


def test_dma_permission_fault(buf: Buf) -> None:
    d = _core.SimDomain(_core.IommuModel.vtd(False))
    assert d.map(0x100000, buf.addr, PAGE, prot=R) == 0
    buf.write(b"\x11" * 8)
    assert d.dma_write(0x100000, b"\x22" * 8) == -errno.EPERM
    assert buf.read(8) == b"\x11" * 8
    assert d.dma_read(0x100000, 8) == (0, b"\x11" * 8)
    assert d.translate(0x100000, W) == -errno.EPERM
    assert d.take_faults() == [(0x100000, True, -errno.EPERM)]


def test_dma_to_freed_memory_faults_instead_of_crashing() -> None:
    b = Buf(PAGE)
    d = _core.SimDomain(_core.IommuModel.vtd(False))
    assert d.map(0x100000, b.addr, PAGE) == 0
    b.free()
    assert d.dma_write(0x100000, b"x" * 64) == -errno.EFAULT
    assert d.dma_read(0x100000, 64) == (-errno.EFAULT, bytes(64))
    assert [f[2] for f in d.take_faults()] == [-errno.EFAULT, -errno.EFAULT]


# -- dirty tracking -----------------------------------------------------------------------
def test_dirty_tracking_requires_capability() -> None:
    d = _core.SimDomain(_core.IommuModel.vtd(False))
    assert d.set_dirty_tracking(True) == -errno.EOPNOTSUPP
    capable = _core.SimDomain(_core.IommuModel.vtd(False), dirty_capable=True)
    assert capable.set_dirty_tracking(True) == 0


def test_dirty_bits_per_iopte(buf: Buf) -> None:
    d = _core.SimDomain(_core.IommuModel.vtd(True))
    assert d.map(0, buf.addr, 4 * MIB) == 0  # two 2 MiB IOPTEs
    assert d.dma_write(0x1000, b"x") == 0
    assert d.read_and_clear_dirty(0, 4 * MIB) == []  # tracking off: nothing recorded
    assert d.set_dirty_tracking(True) == 0
    assert d.dma_write(0x1000, b"x") == 0
    assert d.read_and_clear_dirty(0, 4 * MIB, no_clear=True) == [(0, 2 * MIB - 1)]
    assert d.read_and_clear_dirty(0x1000, 0x2000) == [(0x1000, 0x2FFF)]  # clipped
    assert d.read_and_clear_dirty(0, 4 * MIB) == []  # the clipped read cleared the IOPTE
    assert d.dma_write(2 * MIB - 1, b"yz") == 0  # touches both IOPTEs
    assert d.read_and_clear_dirty(0, 4 * MIB) == [(0, 4 * MIB - 1)]
    assert d.mark_dirty(3 * MIB) == 1 and d.mark_dirty(5 * MIB) == 0
    assert d.read_and_clear_dirty(0, 4 * MIB) == [(2 * MIB, 4 * MIB - 1)]
    d.mark_dirty(0)
    assert d.set_dirty_tracking(True) == 0  # enabling again starts from a clean slate
    assert d.read_and_clear_dirty(0, 4 * MIB) == []


def test_dirty_walk_cost_is_per_run_not_per_iopte() -> None:
    d = _core.SimDomain(_core.IommuModel.vtd(True))
    assert d.map(0, 1 * TIB, 1 * TIB, largest_pages=False) == 0
    assert d.run_count == 1 and d.iopte_count == TIB // (4 * KIB)
    assert d.set_dirty_tracking(True) == 0
    for iova in (0, 12345 * PAGE, TIB - PAGE):
        assert d.mark_dirty(iova) == 1
    assert d.count_dirty(0, TIB, 4096) == 3
    assert d.count_dirty(0, TIB, 4096) == 0
    big = _core.SimDomain(_core.IommuModel.vtd(True))
    for i in range(64):  # adjacent maps of 2 MiB merge into one run
        assert big.map(i * 2 * MIB, 2 * TIB + i * 2 * MIB, 2 * MIB) == 0
    assert big.run_count == 1 and big.iopte_count == 64


OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("map"),
            st.integers(0, 1023),
            st.integers(1, 600),
            st.integers(0, 1023),
            st.sampled_from([R | W, W, R]),
            st.booleans(),
        ),
        st.tuples(st.just("unmap"), st.integers(0, 1023), st.integers(1, 600)),
        st.tuples(st.just("write"), st.integers(0, 1024 * 4096 - 1), st.integers(1, 20000)),
        st.tuples(st.just("track"), st.booleans()),
        st.tuples(st.just("harvest"), st.integers(0, 1023), st.integers(1, 1024), st.booleans()),
    ),
    max_size=40,
)


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=OPS)
def test_domain_matches_reference_model(buf: Buf, ops: list[tuple]) -> None:
    m = _core.IommuModel.vtd(True)
    d, ref = _core.SimDomain(m), RefDomain(m.pgsize_bitmap)
    pg = 4096
    for op in ops:
        if op[0] == "map":
            _, ip, n, vp, prot, largest = op
            n = min(n, 1024 - ip, 1024 - vp)
            if n <= 0:
                continue
            iova, va, length = ip * pg, buf.addr + vp * pg, n * pg
            expect = -errno.EEXIST if ref.overlaps(iova, length) else 0
            assert d.map(iova, va, length, prot, largest) == expect
            if expect == 0:
                ref.map(iova, va, length, prot, largest)
        elif op[0] == "unmap":
            _, ip, n = op
            assert d.unmap(ip * pg, n * pg) == ref.unmap(ip * pg, n * pg)
        elif op[0] == "write":
            _, iova, n = op
            rc = d.dma_write(iova, b"\x5a" * n)
            ok = ref.write(iova, n)
            assert (rc == 0) == ok
        elif op[0] == "track":
            assert d.set_dirty_tracking(op[1]) == 0
            ref.tracking = op[1]
            if op[1]:
                for p in ref.ptes.values():
                    p[3] = False
        else:
            _, ip, n, no_clear = op
            got = d.read_and_clear_dirty(ip * pg, n * pg, no_clear)
            assert got == ref.harvest(ip * pg, n * pg, no_clear)
        assert d.mapped_bytes == sum(p[0] for p in ref.ptes.values())
        assert d.iopte_count == len(ref.ptes)
    d.take_faults()


def test_dma_races_with_map_and_unmap(buf: Buf) -> None:
    d = _core.SimDomain(_core.IommuModel.vtd(True))
    assert d.set_dirty_tracking(True) == 0
    results: set[int] = set()
    stop = threading.Event()

    def device() -> None:
        while not stop.is_set():
            results.add(d.dma_write(0x100000, b"\x01" * (3 * PAGE)))
            results.add(d.dma_read(0x100000, 2 * PAGE)[0])

    t = threading.Thread(target=device)
    t.start()
    try:
        for i in range(2000):
            assert d.map(0x100000, buf.addr, 4 * PAGE, 3, bool(i & 1)) == 0
            d.read_and_clear_dirty(0, 8 * MIB)
            assert d.unmap(0x100000, 4 * PAGE) == 4 * PAGE
    finally:
        stop.set()
        t.join()
    assert results <= {0, -errno.EFAULT}
    assert d.mapped_bytes == 0
