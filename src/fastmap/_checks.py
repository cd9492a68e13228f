"""The one place where Python integers, integer arrays and paths are checked before they
reach the kernel.

ctypes and pybind11 would otherwise truncate (ctypes: 2**32 + 5 into a u32 is 5), coerce
(True is the address 1) or fail with an unhelpful "incompatible function arguments". Every
uAPI struct field assignment (fastmap._layout) and every integer argument of the raw layer
goes through `integer`, so an out-of-range value is a ValueError naming where it was going.
Arrays of addresses, lengths and ranges (`u64_array`, `u64_pairs`) follow the same rule: a
non-integer is a TypeError, a negative value, one past 2**64 - 1 or a wrong shape a
ValueError naming the argument. Nothing wraps or rounds: numpy would silently turn
``[0, 2**63]`` into floats, so Python sequences are converted element by element.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable
from typing import Any, TypeAlias, cast

import numpy as np
import numpy.typing as npt

U64_MAX = (1 << 64) - 1
U64Array: TypeAlias = npt.NDArray[np.uint64]

#: (low, high) inclusive for each scalar uAPI type.
LIMITS: dict[str, tuple[int, int]] = {
    "u8": (0, (1 << 8) - 1),
    "u16": (0, (1 << 16) - 1),
    "u32": (0, (1 << 32) - 1),
    "u64": (0, (1 << 64) - 1),
    "s32": (-(1 << 31), (1 << 31) - 1),
}


def integer(name: str, value: object, kind: str = "u64") -> int:
    """`value` as an int of uAPI type `kind` ("u8".."u64", "s32").

    TypeError for non-integers and for bools (a bool is never an address, length or id);
    ValueError naming `name` and the value when it does not fit.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not bool ({value!r})")
    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
    lo, hi = LIMITS[kind]
    if not lo <= v <= hi:
        raise ValueError(f"{name}={v:#x} is outside the {kind} range [{lo:#x}, {hi:#x}]")
    return v


def fd_number(name: str, value: object) -> int:
    """A file descriptor number: an int in 0..2**31-1."""
    v = integer(name, value, "s32")
    if v < 0:
        raise ValueError(f"{name}={v} is not a file descriptor (negative)")
    return v


def path(name: str, value: object) -> str:
    """A filesystem path for open(2): str or bytes without NUL (the C string would end there
    and open a different file)."""
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str path, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError(f"{name}={value!r} contains a NUL byte")
    return value


def u64(name: str, value: object) -> int:
    """`value` as an int in [0, 2**64)."""
    return integer(name, value, "u64")


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
