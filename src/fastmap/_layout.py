"""Build ctypes mirrors of the uAPI structs from the C++ layout registry.

The C++ headers in csrc/uapi/ are the one definition of every struct; `_core.uapi_structs()`
reports each struct's size and each field's offset, size and type. This module turns that
into ctypes classes and then checks that ctypes placed every field where the C++ compiler
did, so a Python mirror can never silently disagree with the C++ core or the kernel.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from typing import Any, ClassVar

from fastmap._checks import integer

_SCALARS: dict[str, type[Any]] = {
    "u8": ctypes.c_uint8,
    "u16": ctypes.c_uint16,
    "u32": ctypes.c_uint32,
    "u64": ctypes.c_uint64,
    "s32": ctypes.c_int32,
}

# The size of the kernel's `size`/`argsz` header field that new() fills in.
SIZE_FIELDS = ("size", "argsz")


class LayoutError(ImportError):
    """A ctypes mirror does not match the C++ layout (a build or registry bug)."""


def _describe(obj: ctypes.Structure | ctypes.Union) -> str:
    parts = []
    for name, value in field_values(obj).items():
        parts.append(f"{name}={value:#x}" if isinstance(value, int) else f"{name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def field_values(obj: ctypes.Structure | ctypes.Union) -> dict[str, object]:
    """The fields of a uAPI object as plain Python values (nested objects stay objects)."""
    out: dict[str, object] = {}
    for entry in obj._fields_:
        name = entry[0]
        value = getattr(obj, name)
        if isinstance(value, ctypes.Array):
            value = list(value)
        out[name] = value
    return out


def _checked_setattr(obj: ctypes.Structure | ctypes.Union, name: str, value: Any) -> Any:
    # ctypes truncates silently (2**32 + 5 into a u32 is 5; True is 1): range-check here,
    # the one place every field assignment (constructor keywords included) passes through.
    kinds: dict[str, str] = getattr(type(obj), "_kinds_", {})
    kind = kinds.get(name)
    if kind is not None:
        return integer(f"{type(obj).__name__}.{name}", value, kind)
    return value


class UapiStruct(ctypes.Structure):
    """Base of every generated uAPI struct: a ctypes.Structure with a readable repr and
    range-checked scalar fields (ValueError naming the field and value, never truncation)."""

    #: field name -> scalar type ("u32", ...) for the fields that are plain integers.
    _kinds_: ClassVar[dict[str, str]] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, _checked_setattr(self, name, value))

    def __repr__(self) -> str:
        return _describe(self)

    def fields(self) -> dict[str, object]:
        """The struct's fields as a dict, in declaration order."""
        return field_values(self)


class UapiUnion(ctypes.Union):
    """Base of every generated uAPI union (scalar members range-checked as in UapiStruct)."""

    _kinds_: ClassVar[dict[str, str]] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, _checked_setattr(self, name, value))

    def __repr__(self) -> str:
        return _describe(self)

    def fields(self) -> dict[str, object]:
        """The union's members as a dict, in declaration order."""
        return field_values(self)


# (field name, offset, size, type name, element count; 0 = not an array)
FieldRow = tuple[str, int, int, str, int]
# (struct name, size, is_union, fields)
StructRow = tuple[str, int, bool, list[FieldRow]]


def build_structs(rows: Iterable[StructRow]) -> dict[str, type[UapiStruct | UapiUnion]]:
    """Create one ctypes class per registry row (rows come nested types first)."""
    classes: dict[str, type[UapiStruct | UapiUnion]] = {}
    for name, size, is_union, fields in rows:
        ctype_fields: list[tuple[str, type[Any]]] = []
        kinds: dict[str, str] = {}
        for fname, _offset, _fsize, tname, count in fields:
            if tname in _SCALARS and not count:
                kinds[fname] = tname
            base = _SCALARS.get(tname) or classes.get(tname)
            if base is None:
                raise LayoutError(f"{name}.{fname}: unknown type {tname!r}")
            ctype_fields.append((fname, base * count if count else base))
        base_cls: type[UapiStruct | UapiUnion] = UapiUnion if is_union else UapiStruct
        namespace = {"_fields_": ctype_fields, "_kinds_": kinds, "__module__": "fastmap.uapi"}
        cls = type(name, (base_cls,), namespace)
        _verify(cls, size, fields)
        classes[name] = cls
    return classes


def _verify(cls: type[UapiStruct | UapiUnion], size: int, fields: list[FieldRow]) -> None:
    if ctypes.sizeof(cls) != size:
        raise LayoutError(f"sizeof({cls.__name__}): ctypes {ctypes.sizeof(cls)}, C++ {size}")
    for fname, offset, fsize, _tname, _count in fields:
        descr = getattr(cls, fname)
        if (descr.offset, descr.size) != (offset, fsize):
            raise LayoutError(
                f"{cls.__name__}.{fname}: ctypes offset {descr.offset} size {descr.size}, "
                f"C++ offset {offset} size {fsize}"
            )
