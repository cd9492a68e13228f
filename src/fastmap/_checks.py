"""The one place where Python integers and paths are checked before they reach the kernel.

ctypes and pybind11 would otherwise truncate (ctypes: 2**32 + 5 into a u32 is 5), coerce
(True is the address 1) or fail with an unhelpful "incompatible function arguments". Every
uAPI struct field assignment (fastmap._layout) and every integer argument of the raw layer
goes through `integer`, so an out-of-range value is a ValueError naming where it was going.
"""

from __future__ import annotations

import operator
import os

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
