"""RAM blocks and the address space's bookkeeping (no kernel needed)."""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence

import pytest

from fastmap.lifecycle.address_space import AddressSpace
from fastmap.ram import RamBlock, RamUnavailableError, default_hugepage_size, free_hugepages
from tests.hugepages import HugePages

PAGE = mmap.PAGESIZE


@pytest.mark.parametrize("kind", ["anon", "memfd"])
def test_ram_block_kinds(kind: str) -> None:
    with RamBlock(4 * PAGE, 0x100000, kind, name="r") as b:  # type: ignore[arg-type]
        assert b.kind == kind and b.end == 0x100000 + 4 * PAGE
        assert (b.fd is not None) == (kind == "memfd")
        b.write(PAGE - 2, b"abcd")
        assert b.read(PAGE - 2, 4) == b"abcd"
        if b.fd is not None:  # the file holds the same bytes
            assert os.pread(b.fd, 4, PAGE - 2) == b"abcd"
        with pytest.raises(ValueError, match="outside"):
            b.read(4 * PAGE - 1, 2)
    assert b.closed and b.fd is None
    with pytest.raises(ValueError, match="closed"):
        _ = b.va


def test_ram_block_validation() -> None:
    with pytest.raises(ValueError, match="multiple"):
        RamBlock(PAGE + 1, 0)
    with pytest.raises(ValueError, match="aligned"):
        RamBlock(PAGE, 123)
    with pytest.raises(ValueError, match="kind"):
        RamBlock(PAGE, 0, "bogus")  # type: ignore[arg-type]


def test_hugetlb_ram(host_hugepages: HugePages) -> None:
    size = default_hugepage_size()
    if free_hugepages(size) < 1:
        with pytest.raises(RamUnavailableError, match="nr_hugepages"):
            RamBlock(size, 0, "hugetlb")
        return
    with RamBlock(size, 0, "hugetlb") as b:
        assert b.page_size == size
        b.write(size - 1, b"z")
        assert b.read(size - 1, 1) == b"z"


class Recorder:
    def __init__(self, refuse: int | None = None) -> None:
        self.events: list[tuple[str, list[int]]] = []
        self.refuse = refuse

    def region_add(self, sections: Sequence[RamBlock]) -> None:
        if self.refuse is not None and any(s.gpa == self.refuse for s in sections):
            raise OSError("refused")
        self.events.append(("add", [s.gpa for s in sections]))

    def region_del(self, sections: Sequence[RamBlock]) -> None:
        self.events.append(("del", [s.gpa for s in sections]))


def test_listeners_follow_sections() -> None:
    with AddressSpace() as space:
        a = space.add_ram(PAGE, 0x10000)
        first = Recorder()
        space.register_listener(first)  # told about what exists, in one call
        b = space.add_ram(2 * PAGE)  # placed above the highest block
        assert b.gpa == 0x10000 + PAGE
        second = Recorder(refuse=0x40000)
        space.register_listener(second)
        with pytest.raises(OSError, match="refused"):
            space.add_ram(PAGE, 0x40000)
        # The refused block was taken back from the first listener and freed.
        assert [blk.gpa for blk in space.blocks] == [a.gpa, b.gpa]
        space.remove_ram(a)
        space.unregister_listener(second)
        assert first.events == [
            ("add", [0x10000]),
            ("add", [b.gpa]),
            ("add", [0x40000]),
            ("del", [0x40000]),
            ("del", [0x10000]),
        ]
        assert second.events == [("add", [0x10000, b.gpa]), ("del", [0x10000]), ("del", [b.gpa])]
        with pytest.raises(ValueError, match="overlaps"):
            space.add_ram(PAGE, b.gpa + PAGE)
        space.write(b.gpa + 5, b"xy")
        assert space.read(b.gpa + 5, 2) == b"xy"
        with pytest.raises(ValueError, match="not inside"):
            space.read(b.gpa + 2 * PAGE - 1, 2)
    assert space.blocks == []
