"""The batch engine through the Ioas API: all-or-nothing batches, coalescing, parallel
submission, and buffer lifetime. The kernel (simulated, or real in the VM) is the oracle:
after a failed batch, every range of the batch must be free again and everything mapped
before must still be mapped, as the kernel itself reports it."""

from __future__ import annotations

import ctypes
import errno
import gc
import itertools
import mmap
import weakref
from collections.abc import Iterator

import numpy as np
import pytest

from fastmap import uapi
from fastmap.errors import BatchError
from fastmap.ioas import Ioas
from fastmap.kernel import Kernel
from fastmap.prot import Prot

PAGE = mmap.PAGESIZE
BASE = 1 << 32


@pytest.fixture
def ioas(kernel: Kernel) -> Iterator[Ioas]:
    fd = kernel.open("/dev/iommu")
    try:
        with Ioas.allocate(kernel, fd) as io:
            yield io
    finally:
        kernel.close(fd)


@pytest.fixture
def memory() -> np.ndarray:
    """64 page-aligned pages; the array keeps its mmap alive."""
    return np.frombuffer(mmap.mmap(-1, 64 * PAGE), np.uint8)


def _kernel_has(io: Ioas, iova: int, length: int) -> bool:
    """Ask the kernel whether exactly this area is mapped (unmap it and map it back)."""
    cmd = uapi.new(uapi.iommu_ioas_unmap, ioas_id=io.id, iova=iova, length=length)
    try:
        io.kernel.ioctl(io.iommufd, uapi.IOMMU_IOAS_UNMAP, cmd)
    except OSError:
        return False
    seg = next(s for s in io.segments() if s.iova == iova)
    remap = uapi.new(
        uapi.iommu_ioas_map,
        flags=uapi.IOMMU_IOAS_MAP_FIXED_IOVA | seg.prot,
        ioas_id=io.id,
        user_va=seg.va,
        length=length,
        iova=iova,
    )
    io.kernel.ioctl(io.iommufd, uapi.IOMMU_IOAS_MAP, remap)
    return cmd.length == length


def _kernel_free(io: Ioas, iova: int, length: int) -> bool:
    """The kernel has nothing mapped in [iova, iova+length)."""
    cmd = uapi.new(uapi.iommu_ioas_unmap, ioas_id=io.id, iova=iova, length=length)
    try:
        io.kernel.ioctl(io.iommufd, uapi.IOMMU_IOAS_UNMAP, cmd)
    except OSError as e:
        return e.errno == errno.ENOENT
    return False


N = 12


@pytest.mark.parametrize("k", range(N))
def test_failure_at_every_position_rolls_back(ioas: Ioas, memory: np.ndarray, k: int) -> None:
    threads = 1
    va = memory.ctypes.data
    # Something mapped before the batch, sitting where entry k wants to go.
    blocker = BASE + 100 * PAGE
    ioas.map(va, PAGE, blocker)
    iovas = np.array([BASE + i * 2 * PAGE for i in range(N)], np.uint64)
    iovas[k] = blocker
    vas = np.array([va + (i % 8) * PAGE for i in range(N)], np.uint64)
    with pytest.raises(BatchError) as info:
        ioas.map_batch(vas, np.full(N, PAGE), iovas, threads=threads)
    e = info.value
    assert (e.errno, e.index, e.rollback_failed) == (errno.EEXIST, k, False)
    assert e.arguments["iova"] == blocker and "IOMMU_IOAS_MAP" in str(e)
    # Nothing of the batch is left; what was there before still is.
    for i in range(N):
        if i != k:
            assert _kernel_free(ioas, int(iovas[i]), PAGE), f"entry {i} left mapped"
    assert _kernel_has(ioas, blocker, PAGE)
    assert [(s.iova, s.length) for s in ioas.segments()] == [(blocker, PAGE)]


PARALLEL_N = 1024  # enough runs for the engine to use threads (256 per thread at least)


@pytest.mark.parametrize("k", [0, 1, 255, 256, 511, 512, 767, 1000, PARALLEL_N - 1])
def test_parallel_failure_rolls_back_and_names_the_serial_entry(
    ioas: Ioas, memory: np.ndarray, k: int
) -> None:
    va = memory.ctypes.data
    iovas = BASE + np.arange(PARALLEL_N, dtype=np.uint64) * 2 * PAGE
    blocker = int(iovas[k])
    ioas.map(va, PAGE, blocker)
    # A second conflict later on: serial submission stops at k, so k is what is reported.
    later = min(k + 300, PARALLEL_N - 1)
    if later != k:
        ioas.map(va, PAGE, int(iovas[later]))
    vas = va + (np.arange(PARALLEL_N, dtype=np.uint64) % 8) * PAGE
    with pytest.raises(BatchError) as info:
        ioas.map_batch(vas, np.full(PARALLEL_N, PAGE), iovas, threads=4)
    assert (info.value.errno, info.value.index) == (errno.EEXIST, k)
    assert not info.value.rollback_failed
    kept = {blocker, int(iovas[later])}
    assert {s.iova for s in ioas.segments()} == kept
    for i in range(0, PARALLEL_N, 97):
        if int(iovas[i]) not in kept:
            assert _kernel_free(ioas, int(iovas[i]), PAGE)


def test_unmap_batch_failure_restores_everything(ioas: Ioas, memory: np.ndarray) -> None:
    va = memory.ctypes.data
    iovas = ioas.map_batch(
        [va + i * PAGE for i in range(6)], [PAGE] * 6, [BASE + i * 2 * PAGE for i in range(6)]
    )
    before = [(s.iova, s.va, s.length) for s in ioas.segments()]
    # Entry 4 names nothing: the kernel would say ENOENT. Entries 0-3 must come back.
    request = [*list(iovas[:4]), BASE + 1000 * PAGE]
    with pytest.raises(BatchError) as info:
        ioas.unmap_batch(request, [PAGE] * 5)
    assert (info.value.errno, info.value.index) == (errno.ENOENT, 4)
    assert [(s.iova, s.va, s.length) for s in ioas.segments()] == before
    for iova in iovas:
        assert _kernel_has(ioas, int(iova), PAGE)


def test_parallel_gives_the_serial_result(kernel: Kernel, memory: np.ndarray) -> None:
    va = memory.ctypes.data
    rng = np.random.default_rng(7)
    n = 4096
    vas = va + rng.integers(0, 64, n).astype(np.uint64) * PAGE
    iovas = BASE + rng.permutation(n).astype(np.uint64) * 4 * PAGE  # out of order on purpose
    lengths = rng.integers(1, 4, n).astype(np.uint64) * PAGE
    lengths = np.minimum(lengths, (va + 64 * PAGE) - vas)
    results = []
    for threads in (1, 4):
        fd = kernel.open("/dev/iommu")
        with Ioas.allocate(kernel, fd) as io:
            out = io.map_batch(vas, lengths, iovas, threads=threads)
            results.append((out.tolist(), [(s.iova, s.va, s.length) for s in io.segments()]))
        kernel.close(fd)
    assert results[0] == results[1]
    assert results[0][0] == iovas.tolist()


def test_auto_iova_batch_matches_single_maps(kernel: Kernel, memory: np.ndarray) -> None:
    va = memory.ctypes.data
    vas = [va + i * PAGE for i in (0, 3, 5, 9)]
    lengths = [PAGE, 2 * PAGE, 3 * PAGE, PAGE]
    fd = kernel.open("/dev/iommu")
    with Ioas.allocate(kernel, fd) as a, Ioas.allocate(kernel, fd) as b:
        batch = a.map_batch(vas, lengths).tolist()
        single = [b.map(v, n) for v, n in zip(vas, lengths, strict=True)]
    kernel.close(fd)
    assert batch == single


def test_coalesced_run_is_one_area_and_remembers_its_segments(
    ioas: Ioas, memory: np.ndarray
) -> None:
    va = memory.ctypes.data
    n = 16
    iovas = ioas.map_batch(
        [va + i * PAGE for i in range(n)],
        [PAGE] * n,
        [BASE + i * PAGE for i in range(n)],
        coalesce=True,
    )
    assert iovas.tolist() == [BASE + i * PAGE for i in range(n)]
    segs = ioas.segments()
    assert len(segs) == n and {s.run_iova for s in segs} == {BASE}
    # One kernel area: it unmaps (and maps back) whole.
    assert _kernel_has(ioas, BASE, n * PAGE)
    with pytest.raises(BatchError) as info:
        ioas.unmap(BASE + 3 * PAGE, PAGE)
    assert info.value.errno == errno.EINVAL and "coalesced" in str(info.value)
    assert len(ioas) == n
    ioas.unmap(BASE, n * PAGE)
    assert len(ioas) == 0 and _kernel_free(ioas, BASE, n * PAGE)


def test_mapped_numpy_array_outlives_del(ioas: Ioas) -> None:
    arr = np.arange(4096, dtype=np.uint8)
    ref = weakref.ref(arr)
    iova = ioas.map(arr)
    del arr
    gc.collect()
    assert ref() is not None, "a mapped array was freed"
    ioas.unmap(iova, 4096)
    gc.collect()
    assert ref() is None, "the pin was not released on unmap"


def test_mapped_bytearray_cannot_be_resized(ioas: Ioas) -> None:
    buf = bytearray(3 * PAGE)
    iova = ioas.map(buf)
    with pytest.raises(BufferError):
        buf.extend(b"x")
    ioas.unmap(iova, len(buf))
    buf.extend(b"x")
    assert len(buf) == 3 * PAGE + 1


def test_close_unmaps_then_releases(kernel: Kernel) -> None:
    fd = kernel.open("/dev/iommu")
    buf = bytearray(PAGE)
    io = Ioas.allocate(kernel, fd)
    io.map(buf)
    io.close()
    buf.extend(b"x")  # released
    # The IOAS is gone from the kernel's object table.
    cmd = uapi.new(uapi.iommu_destroy, id=io.id)
    with pytest.raises(OSError) as info:
        kernel.ioctl(fd, uapi.IOMMU_DESTROY, cmd)
    assert info.value.errno == errno.ENOENT
    kernel.close(fd)


def test_read_only_buffer_needs_writeable_false(ioas: Ioas) -> None:
    data = b"\x01" * PAGE
    with pytest.raises(ValueError, match=r"prot=Prot.READ"):
        ioas.map(data)
    iova = ioas.map(data, prot=Prot.READ)
    assert ioas.segments()[0].prot == uapi.IOMMU_IOAS_MAP_READABLE
    ioas.unmap(iova, PAGE)


def test_bad_batch_shapes_are_refused_before_any_call(ioas: Ioas) -> None:
    with pytest.raises(ValueError, match="differ"):
        ioas.map_batch([1, 2], [PAGE])
    with pytest.raises(ValueError, match=r"vas=-0x1 is outside the u64 range"):
        ioas.map_batch([-1], [PAGE])
    with pytest.raises(ValueError, match="negative"):
        ioas.map_batch(np.array([-1]), [PAGE])
    with pytest.raises(ValueError, match="threads"):
        ioas.map_batch([PAGE], [PAGE], threads=0)
    assert len(ioas) == 0


def test_kernel_errors_name_the_entry(ioas: Ioas, memory: np.ndarray) -> None:
    va = memory.ctypes.data
    with pytest.raises(BatchError) as info:
        ioas.map_batch([va, va], [PAGE, 0], [BASE, BASE + PAGE])
    assert (info.value.errno, info.value.index) == (errno.EINVAL, 1)
    assert info.value.arguments["length"] == 0
    assert _kernel_free(ioas, BASE, PAGE)


def test_ctypes_address_maps_like_a_buffer(ioas: Ioas) -> None:
    raw = (ctypes.c_char * PAGE)()
    iova = ioas.map(ctypes.addressof(raw), PAGE)
    assert ioas.segments()[0].va == ctypes.addressof(raw)
    ioas.unmap(iova, PAGE)


def test_dense_iovas_come_from_fastmaps_allocator(ioas: Ioas) -> None:
    big = np.frombuffer(mmap.mmap(-1, 8 << 20), np.uint8)
    base = big.ctypes.data
    va2m = (base + (2 << 20) - 1) & ~((2 << 20) - 1)  # a 2 MiB-aligned VA inside
    fixed = ioas.map(base, PAGE, BASE)  # mapped before the allocator exists
    vas = [va2m, va2m + PAGE, va2m + 3 * PAGE]
    lengths = [2 << 20, PAGE, 2 * PAGE]
    iovas = ioas.map_batch(vas[:1], lengths[:1], "dense").tolist()
    iovas += ioas.map_batch(vas[1:], lengths[1:], "dense").tolist()
    ranges = ioas.iova_ranges()
    spans = sorted([(fixed, PAGE), *zip(iovas, lengths, strict=True)])
    for (a, n), (b, _) in itertools.pairwise(spans):
        assert a + n <= b, "allocator handed out an IOVA overlapping a mapping"
    for iova, n in zip(iovas, lengths, strict=True):
        assert any(r.start <= iova and iova + n - 1 <= r.last for r in ranges)
        assert iova >= PAGE  # like the kernel's choice: never IOVA 0
    # The 2 MiB mapping keeps its VA's phase within 2 MiB (a 2 MiB IOPTE stays possible),
    # and small ones keep their offset within the page.
    assert iovas[0] % (2 << 20) == va2m % (2 << 20)
    assert [ioas.translate_iova(i) for i in iovas] == vas
    # Unmapping gives the space back: the same requests land at the same places again.
    ioas.unmap_batch(iovas, lengths)
    again = ioas.map_batch(vas[:1], lengths[:1], "dense").tolist()
    again += ioas.map_batch(vas[1:], lengths[1:], "dense").tolist()
    assert again == iovas
    assert len(ioas.allocations()) == len(ioas) == 4


def test_identity_iovas_equal_the_vas(ioas: Ioas) -> None:
    mem = np.frombuffer(mmap.mmap(-1, 4 * PAGE), np.uint8)
    va = mem.ctypes.data
    out = ioas.map_batch([va, va + 2 * PAGE], [PAGE, 2 * PAGE], "identity")
    assert out.tolist() == [va, va + 2 * PAGE]
    assert ioas.translate_va(va + 2 * PAGE + 5) == va + 2 * PAGE + 5


def test_dense_batch_failure_returns_its_iovas(ioas: Ioas, memory: np.ndarray) -> None:
    va = memory.ctypes.data
    ioas.map(va, PAGE, BASE)
    # Refused by the allocator before any call: a zero length.
    with pytest.raises(ValueError, match=r"lengths\[1\]"):
        ioas.map_batch([va, va], [PAGE, 0], "dense")
    # Refused by the kernel: VA + length wraps around (EOVERFLOW).
    with pytest.raises(BatchError) as info:
        ioas.map_batch([va, (1 << 64) - PAGE], [PAGE, 2 * PAGE], "dense")
    assert (info.value.index, info.value.errno) == (1, errno.EOVERFLOW)
    assert [(r.start, r.length) for r in ioas.allocations()] == [(BASE, PAGE)]
    assert len(ioas) == 1


def test_unmap_all_reports_lengths_past_2_63(ioas: Ioas) -> None:
    # With no device the kernel accepts any VA; 2^63 bytes must not read back as an error.
    ioas.map(PAGE, 1 << 63, PAGE)
    ioas.map(PAGE, PAGE, 1 << 63 | 1 << 62)
    assert ioas.unmap_all() == (1 << 63) + PAGE
