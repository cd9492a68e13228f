"""fastmap.uapi against the C++ registry it is built from."""

from __future__ import annotations

import ctypes
import typing

import pytest

from fastmap import _core, _layout, uapi


def test_declared_names_match_core() -> None:
    """The typed declarations in uapi.py list exactly the structs and constants _core has."""
    declared = set(typing.get_type_hints(uapi, include_extras=False)) - {"STRUCTS", "CONSTANTS"}
    core = {row[0] for row in _core.uapi_structs()} | set(_core.uapi_constants())
    assert declared - core == set(), "declared in uapi.py but unknown to _core"
    assert core - declared == set(), "in _core but not declared in uapi.py (add them)"


def test_struct_declarations_are_struct_types() -> None:
    hints = typing.get_type_hints(uapi)
    for name, is_union in ((row[0], row[2]) for row in _core.uapi_structs()):
        want = type[uapi.UapiUnion] if is_union else type[uapi.UapiStruct]
        assert hints[name] == want, name


@pytest.mark.parametrize("row", _core.uapi_structs(), ids=lambda r: r[0])
def test_layout_matches_core(row: _layout.StructRow) -> None:
    name, size, is_union, fields = row
    cls = getattr(uapi, name)
    assert issubclass(cls, ctypes.Union if is_union else ctypes.Structure)
    assert ctypes.sizeof(cls) == size
    for fname, offset, fsize, _type, _count in fields:
        assert (getattr(cls, fname).offset, getattr(cls, fname).size) == (offset, fsize)


def test_constants_are_module_ints() -> None:
    for name, value in _core.uapi_constants().items():
        assert getattr(uapi, name) == value
        assert isinstance(getattr(uapi, name), int)


def test_layout_mismatch_is_detected() -> None:
    rows = [("bad", 8, False, [("a", 0, 4, "u32", 0), ("b", 2, 4, "u32", 0)])]
    with pytest.raises(_layout.LayoutError, match=r"bad\.b"):
        _layout.build_structs(rows)
    with pytest.raises(_layout.LayoutError, match="sizeof"):
        _layout.build_structs([("short", 16, False, [("a", 0, 4, "u32", 0)])])
    with pytest.raises(_layout.LayoutError, match="unknown type"):
        _layout.build_structs([("odd", 4, False, [("a", 0, 4, "u31", 0)])])


def test_new_sets_size_header() -> None:
    m = uapi.new(uapi.iommu_ioas_map, ioas_id=3, length=4096)
    assert m.size == 40 and m.ioas_id == 3 and m.length == 4096
    b = uapi.new(uapi.vfio_device_bind_iommufd, iommufd=5)
    assert b.argsz == ctypes.sizeof(uapi.vfio_device_bind_iommufd)
    assert uapi.new(uapi.iommu_destroy, size=7).size == 7  # an explicit size wins
    r = uapi.new(uapi.iommu_iova_range, start=1, last=2)  # no size header
    assert (r.start, r.last) == (1, 2)


def test_nested_payload() -> None:
    cmd = uapi.new(uapi.iommu_test_cmd, op=uapi.IOMMU_TEST_OP_DIRTY)
    cmd.u.dirty.iova = 0x1000
    assert uapi.iommu_test_cmd.u.offset == 16
    assert uapi.iommu_test_dirty.iova.offset == 8
    raw = bytes(cmd)
    assert int.from_bytes(raw[24:32], "little") == 0x1000


def test_offsetofend() -> None:
    assert uapi.offsetofend(uapi.iommu_ioas_map, "iova") == 40
    assert uapi.offsetofend(uapi.iommu_hw_info, "reserved") == 32


def test_request_names() -> None:
    assert uapi.request_name(uapi.IOMMU_IOAS_MAP) == "IOMMU_IOAS_MAP"
    assert uapi.request_name(0x3B85) == "IOMMU_IOAS_MAP"
    assert uapi.request_name(uapi.VFIO_DEVICE_BIND_IOMMUFD) == "VFIO_DEVICE_BIND_IOMMUFD"
    assert uapi.request_name(uapi.IOMMU_TEST_CMD) == "IOMMU_TEST_CMD"
    shared = uapi.request_name(uapi.VFIO_DEVICE_FEATURE)
    assert shared == "VFIO_DEVICE_FEATURE|VFIO_IOMMU_DIRTY_PAGES"
    assert uapi.request_name(0x3B7F) == "_IO(';', 0x7f)"
    assert uapi.request_name(0x1234) == "ioctl 0x1234"


def test_repr_and_fields() -> None:
    m = uapi.new(uapi.iommu_hw_info, dev_id=2)
    assert "dev_id=0x2" in repr(m)
    assert m.fields()["reserved"] == [0, 0, 0]


def test_core_stub_lists_every_binding() -> None:
    """_core.pyi names exactly what the extension exports (classes and functions)."""
    import ast
    from pathlib import Path

    stub = ast.parse((Path(_core.__file__).parent / "_core.pyi").read_text())
    stubbed = {n.name for n in stub.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
    exported = {n for n in dir(_core) if not n.startswith("_")}
    assert stubbed == exported
