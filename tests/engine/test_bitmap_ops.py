"""fastmap.bitmap against pure-Python and numpy reference models.

The references work on an explicit list of bits (LSB-first within little-endian u64 words,
the kernel's GET_DIRTY_BITMAP layout), so they share nothing with the word-at-a-time C++.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fuzzing import examples

from fastmap import bitmap

ALL = (1 << 64) - 1
PAGES = [1 << s for s in range(12, 31)]  # 4 KiB .. 1 GiB

# Hypothesis imports libcst to explain a failure, which warns on this Python; with
# filterwarnings=error that would turn a failing example into a pytest INTERNALERROR.
pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)

# Derandomized so that CI runs the same examples every time.
reproducible = settings(max_examples=examples(200), deadline=None)


# ---- reference model -------------------------------------------------------------------------


def ref_bits(bm: np.ndarray, nbits: int) -> list[int]:
    out = []
    for i in range(nbits):
        out.append((int(bm[i // 64]) >> (i % 64)) & 1)
    return out


def ref_pack(bits: list[int]) -> np.ndarray:
    words = [0] * ((len(bits) + 63) // 64)
    for i, b in enumerate(bits):
        if b:
            words[i // 64] |= 1 << (i % 64)
    return np.array(words, dtype=np.uint64)


def ref_runs(bits: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    start = None
    for i, b in enumerate([*bits, 0]):
        if b and start is None:
            start = i
        elif not b and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def ref_convert(bits: list[int], from_page: int, to_page: int) -> list[int]:
    if to_page >= from_page:
        r = to_page // from_page
        return [int(any(bits[j : j + r])) for j in range(0, len(bits), r)]
    r = from_page // to_page
    return [b for b in bits for _ in range(r)]


def as_rows(runs: list[tuple[int, int]]) -> np.ndarray:
    return np.array(runs, dtype=np.uint64).reshape(-1, 2)


# ---- strategies ------------------------------------------------------------------------------

# Words that are mostly all-zeros / all-ones (so runs cross word boundaries) and some mixed.
word = st.one_of(
    st.sampled_from([0, ALL, 1, 1 << 63, ALL >> 1, ALL ^ 1, 0x5555555555555555]),
    st.integers(0, ALL),
)


@st.composite
def bitmaps(draw: st.DrawFn, max_words: int = 12) -> tuple[np.ndarray, int]:
    """A bitmap and an nbits that may end mid-word; bits past nbits are random garbage."""
    words = draw(st.lists(word, min_size=0, max_size=max_words))
    nwords = len(words)
    nbits = draw(st.integers(max(0, 64 * nwords - 63), 64 * nwords)) if nwords else 0
    return np.array(words, dtype=np.uint64), nbits


# ---- properties ------------------------------------------------------------------------------


@reproducible
@given(bitmaps())
def test_popcount(case: tuple[np.ndarray, int]) -> None:
    bm, nbits = case
    assert bitmap.popcount(bm, nbits) == sum(ref_bits(bm, nbits))


@reproducible
@given(bitmaps())
def test_count_floor_counts_every_word(case: tuple[np.ndarray, int]) -> None:
    bm, _ = case
    assert bitmap.count_floor(bm) == sum(bin(int(w)).count("1") for w in bm)


@reproducible
@given(bitmaps())
def test_to_ranges(case: tuple[np.ndarray, int]) -> None:
    bm, nbits = case
    got = bitmap.to_ranges(bm, nbits)
    assert got.dtype == np.uint64 and got.shape[1:] == (2,)
    assert got.tolist() == [list(r) for r in ref_runs(ref_bits(bm, nbits))]


@reproducible
@given(bitmaps())
def test_ranges_round_trip(case: tuple[np.ndarray, int]) -> None:
    bm, nbits = case
    back = bitmap.from_ranges(bitmap.to_ranges(bm, nbits), nbits)
    np.testing.assert_array_equal(back, ref_pack(ref_bits(bm, nbits)))


@st.composite
def runs_in(draw: st.DrawFn) -> tuple[list[tuple[int, int]], int]:
    nbits = draw(st.integers(0, 900))
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        first = draw(st.integers(0, nbits))
        rows.append((first, draw(st.integers(0, nbits - first))))
    return rows, nbits


@reproducible
@given(runs_in())
def test_from_ranges_overlapping(case: tuple[list[tuple[int, int]], int]) -> None:
    rows, nbits = case
    bits = [0] * nbits
    for first, count in rows:
        for i in range(first, first + count):
            bits[i] = 1
    got = bitmap.from_ranges(as_rows(rows), nbits)
    assert got.shape == (bitmap.words_for(nbits),)
    np.testing.assert_array_equal(got, ref_pack(bits))


@reproducible
@given(st.data())
def test_or_merge(data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 40))
    a = np.array(data.draw(st.lists(word, min_size=n, max_size=n)), dtype=np.uint64)
    b = np.array(data.draw(st.lists(word, min_size=n, max_size=n)), dtype=np.uint64)
    expect = [int(x) | int(y) for x, y in zip(a, b, strict=True)]
    bitmap.or_merge(a, b)
    assert [int(x) for x in a] == expect


@reproducible
@given(bitmaps(max_words=20), st.sampled_from(PAGES), st.sampled_from(PAGES))
def test_convert(case: tuple[np.ndarray, int], from_page: int, to_page: int) -> None:
    bm, nbits = case
    ratio = max(from_page, to_page) // min(from_page, to_page)
    if to_page < from_page and nbits * ratio > 1 << 16:
        nbits = min(nbits, (1 << 16) // ratio)  # keep the bit-list reference small
    expect = ref_convert(ref_bits(bm, nbits), from_page, to_page)
    assert bitmap.converted_nbits(nbits, from_page, to_page) == len(expect)
    got = bitmap.convert(bm, nbits, from_page, to_page)
    np.testing.assert_array_equal(got, ref_pack(expect))


# ---- edge cases ------------------------------------------------------------------------------


def test_empty() -> None:
    empty = np.zeros(0, dtype=np.uint64)
    assert bitmap.popcount(empty) == 0
    assert bitmap.count_floor(empty) == 0
    assert bitmap.to_ranges(empty).shape == (0, 2)
    assert bitmap.from_ranges([], 0).shape == (0,)
    assert bitmap.convert(empty, 0, 4096, 2 << 20).shape == (0,)
    # nbits 0 over a non-empty bitmap: nothing counts.
    assert bitmap.to_ranges(np.full(2, ALL, dtype=np.uint64), 0).shape == (0, 2)


@pytest.mark.parametrize("nbits", [1, 63, 64, 65, 127, 128, 129, 64 * 2048, 64 * 2048 + 1])
def test_all_ones_is_one_run(nbits: int) -> None:
    bm = np.full(bitmap.words_for(nbits) + 1, ALL, dtype=np.uint64)
    assert bitmap.to_ranges(bm, nbits).tolist() == [[0, nbits]]
    assert bitmap.popcount(bm, nbits) == nbits
    np.testing.assert_array_equal(
        bitmap.from_ranges([[0, nbits]], nbits)[:-1], bm[: bitmap.words_for(nbits) - 1]
    )


def test_run_across_many_words() -> None:
    bm = np.zeros(10, dtype=np.uint64)
    bm[1] = np.uint64(1 << 63)
    bm[2:7] = np.uint64(ALL)
    bm[7] = np.uint64(0b111)
    assert bitmap.to_ranges(bm).tolist() == [[127, 1 + 5 * 64 + 3]]


def test_alternating_bits_every_run_separate() -> None:
    bm = np.full(3, 0x5555555555555555, dtype=np.uint64)
    assert bitmap.to_ranges(bm).tolist() == [[2 * i, 1] for i in range(96)]
    bm = np.full(3, 0xAAAAAAAAAAAAAAAA, dtype=np.uint64)
    assert bitmap.to_ranges(bm).tolist() == [[2 * i + 1, 1] for i in range(96)]


def test_garbage_past_nbits_is_ignored() -> None:
    bm = np.array([ALL, ALL], dtype=np.uint64)
    assert bitmap.to_ranges(bm, 70).tolist() == [[0, 70]]
    assert bitmap.popcount(bm, 70) == 70
    assert bitmap.convert(bm, 70, 4096, 1 << 18).tolist() == [0b11]  # 64 + 6 pages: 2 coarse
    assert bitmap.convert(bm, 70, 1 << 13, 1 << 12).tolist() == [ALL, ALL, 0xFFF]


def test_4k_to_2m_and_back() -> None:
    fine = 512 * 5 + 7  # five whole 2 MiB pages and a partial one
    bm = bitmap.from_ranges([[511, 1], [3 * 512 + 100, 1], [5 * 512 + 6, 1]], fine)
    coarse = bitmap.convert(bm, fine, 4096, 2 << 20)
    assert bitmap.converted_nbits(fine, 4096, 2 << 20) == 6
    assert coarse.tolist() == [0b101001]
    back = bitmap.convert(coarse, 6, 2 << 20, 4096)
    assert bitmap.to_ranges(back, 6 * 512).tolist() == [[0, 512], [3 * 512, 512], [5 * 512, 512]]


def numpy_runs(bm: np.ndarray, nbits: int) -> np.ndarray:
    """An independent vectorized reference for large bitmaps."""
    bits = np.unpackbits(bm.astype("<u8").view(np.uint8), bitorder="little")[:nbits]
    edges = np.diff(np.concatenate(([0], bits.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return np.stack([starts, ends - starts], axis=1).astype(np.uint64)


@pytest.mark.parametrize("density", [0.0, 0.001, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("extra_bits", [0, 17])
def test_large_random_against_numpy(density: float, extra_bits: int) -> None:
    rng = np.random.default_rng(1234)
    nbits = 64 * 5000 + extra_bits  # several internal chunks
    bits = (rng.random(64 * bitmap.words_for(nbits)) < density).astype(np.uint8)
    bm = np.packbits(bits, bitorder="little").view("<u8").astype(np.uint64)
    got = bitmap.to_ranges(bm, nbits)
    np.testing.assert_array_equal(got, numpy_runs(bm, nbits).reshape(-1, 2))
    assert bitmap.popcount(bm, nbits) == int(bits[:nbits].sum())


def test_output_grows_past_a_sparse_start() -> None:
    # The first chunks predict few runs; then every other bit is set (the most runs a bitmap
    # can have), so the output buffer must grow several times.
    bm = np.zeros(40000, dtype=np.uint64)
    bm[3000] = np.uint64(1)
    bm[20000:] = np.uint64(0x5555555555555555)
    got = bitmap.to_ranges(bm)
    np.testing.assert_array_equal(got, numpy_runs(bm, 64 * len(bm)))
    assert len(got) == 1 + 20000 * 32


def test_runs_crossing_chunk_boundaries() -> None:
    bm = np.zeros(3 * 2048 + 5, dtype=np.uint64)
    bm[2047] = np.uint64(1 << 63)  # one bit at the end of chunk 0 ...
    bm[2048] = np.uint64(1)  # ... continued into chunk 1
    bm[4000 : 4096 + 2048] = np.uint64(ALL)  # a run covering a chunk boundary
    bm[-1] = np.uint64(1)
    assert bitmap.to_ranges(bm, 64 * len(bm) - 3).tolist() == [
        [2047 * 64 + 63, 2],
        [4000 * 64, (4096 + 2048 - 4000) * 64],
        [(len(bm) - 1) * 64, 1],
    ]


def test_non_contiguous_input_is_read_correctly() -> None:
    bm = np.array([ALL, 0, 1, 0, ALL, 0], dtype=np.uint64)[::2]  # [ALL, 1, ALL]
    assert bitmap.to_ranges(bm).tolist() == [[0, 65], [128, 64]]
    assert bitmap.popcount(bm) == 129
