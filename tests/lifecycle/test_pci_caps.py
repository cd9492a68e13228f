"""The PCI capability parser on config spaces built by hand: the standard list, the
extended list, and lists that are empty, corrupt or loop."""

from __future__ import annotations

import struct

import pytest

from fastmap.lifecycle.pci_caps import (
    CAP_ID_EXP,
    CAP_ID_MSI,
    CAP_ID_MSIX,
    EXT_CAP_ID_ERR,
    EXT_CAP_ID_SRIOV,
    find_capability,
    msi_info,
    parse_capabilities,
)


def _config(size: int = 256, caps: list[tuple[int, int, int]] | None = None) -> bytearray:
    """A config space with the standard caps (offset, id, next) and the cap-list bit."""
    cfg = bytearray(size)
    if caps:
        struct.pack_into("<H", cfg, 0x06, 0x10)
        cfg[0x34] = caps[0][0]
        for off, cap_id, nxt in caps:
            cfg[off], cfg[off + 1] = cap_id, nxt
    return cfg


def test_standard_list() -> None:
    cfg = _config(caps=[(0x40, CAP_ID_MSI, 0x50), (0x50, CAP_ID_EXP, 0x90), (0x90, CAP_ID_MSIX, 0)])
    caps = parse_capabilities(bytes(cfg))
    assert [(c.id, c.offset) for c in caps] == [(0x05, 0x40), (0x10, 0x50), (0x11, 0x90)]
    assert str(caps[0]) == "cap 0x05 MSI @ 0x40"
    assert find_capability(caps, CAP_ID_MSIX) == caps[2]
    assert find_capability(caps, 0x01) is None


def test_no_cap_list_bit_means_no_caps() -> None:
    cfg = _config(caps=[(0x40, CAP_ID_MSI, 0)])
    struct.pack_into("<H", cfg, 0x06, 0)
    assert parse_capabilities(bytes(cfg)) == []


def test_loop_and_bad_pointers_stop() -> None:
    looping = _config(caps=[(0x40, CAP_ID_MSI, 0x50), (0x50, CAP_ID_EXP, 0x40)])
    assert len(parse_capabilities(bytes(looping))) == 48  # the kernel's TTL
    into_header = _config(caps=[(0x40, CAP_ID_MSI, 0x10)])
    assert [c.offset for c in parse_capabilities(bytes(into_header))] == [0x40]
    absent = _config(caps=[(0x40, 0xFF, 0)])
    assert parse_capabilities(bytes(absent)) == []
    with pytest.raises(ValueError):
        parse_capabilities(bytes(16))


def test_extended_list() -> None:
    cfg = _config(4096, caps=[(0x40, CAP_ID_EXP, 0)])
    struct.pack_into("<I", cfg, 0x100, EXT_CAP_ID_ERR | (2 << 16) | (0x148 << 20))
    struct.pack_into("<I", cfg, 0x148, EXT_CAP_ID_SRIOV | (1 << 16))
    caps = parse_capabilities(bytes(cfg))
    ext = [c for c in caps if c.extended]
    assert [(c.id, c.offset, c.version) for c in ext] == [(1, 0x100, 2), (0x10, 0x148, 1)]
    assert ext[1].name == "SR-IOV"
    assert find_capability(caps, EXT_CAP_ID_SRIOV, extended=True) == ext[1]
    # A 256-byte space has no extended list, whatever follows.
    assert not [c for c in parse_capabilities(bytes(cfg[:256])) if c.extended]


def test_msi_info() -> None:
    cfg = _config(caps=[(0x40, CAP_ID_MSI, 0)])
    struct.pack_into("<H", cfg, 0x42, 0x0080 | (2 << 1) | 1)  # 64-bit, 4 vectors, enabled
    info = msi_info(bytes(cfg), parse_capabilities(bytes(cfg))[0])
    assert (info.enabled, info.vectors, info.addr64, info.per_vector_masking) == (
        True,
        4,
        True,
        False,
    )
