"""u64 arguments: the one place Python values become the uint64 arrays the engine takes.

Every API that takes addresses, lengths or ranges converts them here, so they all refuse the
same things the same way: a non-integer (float, str, a float dtype) is a `TypeError`; a
negative value, one past 2**64 - 1 or a wrong shape is a `ValueError` naming the argument.
Nothing wraps or rounds: numpy would silently turn ``[0, 2**63]`` into floats, so Python
sequences are converted element by element.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any, TypeAlias, cast

import numpy as np
import numpy.typing as npt

__all__ = ["U64_MAX", "U64Array", "u64", "u64_array", "u64_pairs"]

U64_MAX = (1 << 64) - 1
U64Array: TypeAlias = npt.NDArray[np.uint64]


def u64(name: str, value: object) -> int:
    """`value` as an int in [0, 2**64)."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    try:
        v = operator.index(cast("Any", value))
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {value!r}") from None
    if not 0 <= v <= U64_MAX:
        raise ValueError(f"{name}: expected 0 <= {name} < 2**64, got {v}")
    return v


def u64_array(name: str, values: npt.ArrayLike) -> U64Array:
    """A contiguous 1-D uint64 array of `values` (ints, or a numpy integer array)."""
    if not isinstance(values, np.ndarray):
        try:
            items: list[Any] = list(cast("Iterable[Any]", values))
        except TypeError:
            raise TypeError(f"{name}: expected a 1-D sequence of integers") from None
        return np.fromiter((u64(name, v) for v in items), dtype=np.uint64, count=len(items))
    if values.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {values.shape}")
    if values.dtype.kind == "O":
        return u64_array(name, values.tolist())
    if values.size and values.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integers, got dtype={values.dtype}")
    if values.dtype.kind == "i" and values.size and int(values.min()) < 0:
        raise ValueError(f"{name}: negative value at index {int(np.argmin(values))}")
    return np.ascontiguousarray(values, dtype=np.uint64)


def u64_pairs(name: str, values: Any) -> U64Array:
    """A contiguous (N, 2) uint64 array of `values` (rows of two integers)."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: not an (N, 2) array of integers ({e})") from None
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.uint64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name}: expected shape (N, 2), got {arr.shape}")
    if arr.dtype.kind in "fO" and not isinstance(values, np.ndarray):
        # Python ints past int64 make numpy guess float64 or object; take them exactly.
        obj = np.asarray(values, dtype=object)
        if all(type(x) is int for x in obj.flat):
            arr = obj
    if arr.dtype.kind == "O" and all(type(x) is int for x in arr.flat):
        too_big = np.array([[not 0 <= x <= U64_MAX for x in row] for row in arr])
        if too_big.any():
            row = int(np.flatnonzero(too_big.any(1))[0])
            raise ValueError(f"{name}: row {row} {arr[row].tolist()} is not in [0, 2**64)")
        return np.ascontiguousarray(arr.astype(np.uint64))
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integers, got dtype={arr.dtype}")
    if arr.dtype.kind == "i" and (arr < 0).any():
        row = int(np.flatnonzero((arr < 0).any(1))[0])
        raise ValueError(f"{name}: negative value in row {row}")
    return np.ascontiguousarray(arr, dtype=np.uint64)
