"""fastmap.bitmap refuses bad arguments with a ValueError naming the argument and value (a
TypeError for a non-integer, fastmap's one u64 convention)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fastmap import bitmap

U64 = np.zeros(2, dtype=np.uint64)


def fr(rows: object, nbits: int = 16) -> Callable[[], object]:
    return lambda: bitmap.from_ranges(rows, nbits)


CASES = [
    (lambda: bitmap.popcount(np.zeros(2, dtype=np.int64)), r"bm: .*dtype=int64"),
    (lambda: bitmap.popcount([1, 2]), r"bm: expected a numpy.uint64 array, got list"),  # type: ignore[arg-type]
    (lambda: bitmap.to_ranges(np.zeros((2, 2), dtype=np.uint64)), r"bm: .*shape=\(2, 2\)"),
    (lambda: bitmap.to_ranges(U64, 129), r"nbits: 129 bits need 3 words, bm has 2"),
    (lambda: bitmap.to_ranges(U64, -1), r"nbits=-0x1 is outside the u64 range"),
    (lambda: bitmap.count_floor(np.zeros(2, dtype=np.uint32)), r"bm: .*dtype=uint32"),
    (
        lambda: bitmap.or_merge(U64.copy(), np.zeros(3, dtype=np.uint64)),
        r"src: length 3 differs from dst's 2",
    ),
    (
        lambda: bitmap.or_merge(np.zeros(4, dtype=np.uint64)[::2], U64),
        r"dst: must be writable and contiguous",
    ),
    (fr([[0, 5], [10, 7]]), r"ranges: row 1 \[10, 7\] ends past nbits=16"),
    (fr([[17, 0]]), r"ranges: row 0 \[17, 0\] ends past nbits=16"),
    (fr([[2**64 - 1, 2]]), r"ranges: row 0 .* ends past"),
    (fr([[0, 1, 2]]), r"ranges: expected shape \(N, 2\), got \(1, 3\)"),
    (fr([[0, -1]]), r"ranges: negative value in row 0"),
    (fr([[0, 1], [-1, 2**63]]), r"ranges: row 1 \[-1, 9223372036854775808\] is not in"),
    (fr([[2**64, 1]]), r"ranges: row 0 \[18446744073709551616, 1\] is not in"),
    (fr([], -3), r"nbits=-0x3 is outside the u64 range"),
    (lambda: bitmap.convert(U64, 128, 4096, 3000), r"to_page: expected a power of two, got 3000"),
    (lambda: bitmap.convert(U64, 128, 0, 4096), r"from_page: expected a power of two, got 0"),
    (lambda: bitmap.convert(U64, 128, 1 << 63, 1), r"nbits: 128 pages of .* make .* pages of 1"),
    (lambda: bitmap.words_for(-1), r"nbits=-0x1 is outside the u64 range"),
]


@pytest.mark.parametrize(("call", "match"), CASES)
def test_bad_arguments(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


NOT_INTEGERS = [
    (lambda: bitmap.popcount(U64, 1.5), r"nbits must be an integer, not float"),  # type: ignore[arg-type]
    (lambda: bitmap.popcount(U64, True), r"nbits must be an integer, not bool"),
    (fr([[0.5, 1]]), r"ranges: expected integers, got dtype=float64"),
]


@pytest.mark.parametrize(("call", "match"), NOT_INTEGERS)
def test_non_integers_are_type_errors(call: Callable[[], object], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        call()


def test_read_only_dst_is_refused() -> None:
    dst = np.zeros(2, dtype=np.uint64)
    dst.flags.writeable = False
    with pytest.raises(ValueError, match="dst: must be writable"):
        bitmap.or_merge(dst, U64)


def test_read_only_input_is_fine() -> None:
    bm = np.array([0b110, 0], dtype=np.uint64)
    bm.flags.writeable = False
    assert bitmap.to_ranges(bm).tolist() == [[1, 2]]
    src = bm
    dst = np.zeros(2, dtype=np.uint64)
    bitmap.or_merge(dst, src)
    assert dst.tolist() == [6, 0]


def test_numpy_integer_arguments_are_accepted() -> None:
    bm = np.array([0xFF], dtype=np.uint64)
    assert bitmap.popcount(bm, np.uint64(4)) == 4
    assert bitmap.to_ranges(bm, np.int64(3)).tolist() == [[0, 3]]
