"""DmaMemory (aligned memory for devices) and mapping any Python buffer with a device
attached: the kernel takes whole pages only, so fastmap rounds a buffer to its pages and
returns the IOVA of its first byte (the oracle: the simulated kernel refuses a sub-page
mapping on such an IOAS, as Linux does)."""

from __future__ import annotations

import errno
import mmap

import numpy as np
import pytest

from fastmap import DmaMemory, Ioas, RamBlock
from fastmap.dma_memory import HUGE_1G, HUGE_2M, RamUnavailableError, free_hugepages
from fastmap.errors import InvalidArgumentError, RamInUseError

PAGE = mmap.PAGESIZE


@pytest.mark.parametrize(
    ("kind", "align"),
    [("anon", PAGE), ("anon", HUGE_2M), ("thp", HUGE_2M), ("memfd", PAGE), ("memfd", HUGE_1G)],
)
def test_aligned_kinds(kind: str, align: int) -> None:
    with DmaMemory(3 * PAGE + 1, kind, align=align) as mem:  # type: ignore[arg-type]
        assert mem.va % align == 0 and mem.length == 4 * PAGE
        assert (mem.fd is not None) == (kind == "memfd")
        a = mem.array
        assert a.dtype == np.uint8 and a.size == mem.length and a.ctypes.data == mem.va
        a[:4] = [1, 2, 3, 4]
        assert mem.read(0, 4) == b"\x01\x02\x03\x04"
        assert mem.view(np.uint32, count=1)[0] == 0x04030201


def test_thp_is_2m_aligned_by_default() -> None:
    with DmaMemory(HUGE_2M, "thp") as mem:
        assert mem.align == HUGE_2M and mem.va % HUGE_2M == 0


def test_hugetlb_needs_free_huge_pages() -> None:
    if free_hugepages(HUGE_2M) >= 1:
        with DmaMemory(HUGE_2M, "hugetlb", hugepage_size=HUGE_2M) as mem:
            assert mem.va % HUGE_2M == 0 and mem.page_size == HUGE_2M
    else:
        with pytest.raises(RamUnavailableError, match="nr_hugepages") as info:
            DmaMemory(HUGE_2M, "hugetlb", hugepage_size=HUGE_2M)
        assert info.value.errno == errno.ENOMEM


@pytest.mark.parametrize("align", [PAGE // 2, 3 * PAGE])
def test_bad_alignment_is_refused(align: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        DmaMemory(PAGE, align=align)


def test_float_length_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        DmaMemory(4096.0)  # type: ignore[arg-type]


def test_ram_block_is_dma_memory() -> None:
    with RamBlock(2 * PAGE, 0x100000) as block:
        assert isinstance(block, DmaMemory) and block.array.size == 2 * PAGE


def test_close_is_refused_while_mapped(device_ioas: Ioas) -> None:
    mem = DmaMemory(4 * PAGE)
    whole = device_ioas.map(mem)
    part = device_ioas.map(mem.array[PAGE + 5 : 2 * PAGE])  # a view inside it
    raw = device_ioas.map(mem.va + 2 * PAGE, PAGE)  # a raw VA inside it
    for iova, length in ((whole, mem.length), (part, PAGE - 5), (raw, PAGE)):
        with pytest.raises(RamInUseError) as info:
            mem.close()
        assert info.value.errno == errno.EBUSY and not mem.closed
        device_ioas.unmap(iova, length)
    mem.close()
    assert mem.closed and not mem.mapped


def test_a_batch_of_raw_vas_leases_the_memory(device_ioas: Ioas) -> None:
    mem = DmaMemory(8 * PAGE)
    vas = mem.va + np.arange(8, dtype=np.uint64) * np.uint64(PAGE)
    lengths = np.full(8, PAGE, np.uint64)
    iovas = device_ioas.map_batch(vas, lengths, "dense")
    device_ioas.unmap_batch(iovas[:7], lengths[:7])
    with pytest.raises(RamInUseError):
        mem.close()  # entry 7 is still mapped
    device_ioas.unmap_batch(iovas[7:], lengths[7:])
    mem.close()


def test_an_array_outlives_close() -> None:
    mem = DmaMemory(PAGE)
    a = mem.array
    a[0] = 7
    mem.close()
    assert a[0] == 7  # the pages go when the last array does
    with pytest.raises(ValueError, match="closed"):
        mem.array  # noqa: B018


def test_a_numpy_buffer_maps_with_a_device_attached(device_ioas: Ioas) -> None:
    assert device_ioas.iova_alignment == PAGE
    buf = np.zeros(1 << 20, np.uint8)
    offset = buf.ctypes.data % PAGE
    assert offset, "numpy's data is expected to start inside a page"
    iova = device_ioas.map(buf)
    assert iova % PAGE == offset
    assert device_ioas.translate_va(buf.ctypes.data) == iova
    assert device_ioas.translate_iova(iova + 100) == buf.ctypes.data + 100
    [segment] = device_ioas.segments()
    assert segment.iova == iova - offset and segment.length % PAGE == 0
    assert segment.length >= offset + buf.nbytes
    assert device_ioas.unmap(iova, buf.nbytes) == segment.length
    assert len(device_ioas) == 0


def test_a_raw_sub_page_va_is_refused_by_the_kernel(device_ioas: Ioas) -> None:
    """Raw VAs are mapped as given: the kernel's EINVAL, with a hint naming the alignment."""
    buf = np.zeros(2 * PAGE, np.uint8)
    with pytest.raises(InvalidArgumentError, match="alignment 0x1000"):
        device_ioas.map(buf.ctypes.data + 16, PAGE)


def test_a_fixed_iova_must_share_the_buffer_page_offset(device_ioas: Ioas) -> None:
    buf = bytearray(100)
    view = memoryview(buf)
    with pytest.raises(ValueError, match="into a page"):
        device_ioas.map(view, iova=0x100000)
    offset = np.frombuffer(buf, np.uint8).ctypes.data % PAGE
    iova = device_ioas.map(view, iova=0x100000 + offset)
    assert iova == 0x100000 + offset
    device_ioas.unmap(iova, len(buf))


def test_dense_never_picks_a_sub_page_iova(device_ioas: Ioas) -> None:
    mem = DmaMemory(64 * PAGE)
    vas = mem.va + np.arange(8, dtype=np.uint64) * np.uint64(8 * PAGE) + np.uint64(3)
    lengths = np.full(8, 100, np.uint64)
    lengths[7] = PAGE  # runs into the next page: two pages
    iovas = device_ioas.map_batch(vas, lengths, "dense")
    assert ((iovas % np.uint64(PAGE)) == np.uint64(3)).all()
    pages = [(s.iova, s.length) for s in device_ioas.segments()]
    assert all(iova % PAGE == 0 for iova, _ in pages)
    assert sorted(length for _, length in pages) == [PAGE] * 7 + [2 * PAGE]
    assert device_ioas.translate_va(int(vas[5])) == iovas[5]
    device_ioas.unmap_batch(iovas, lengths)
    assert len(device_ioas) == 0
    mem.close()
