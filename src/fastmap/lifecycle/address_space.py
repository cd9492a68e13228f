"""A guest's memory as devices see it: RAM blocks at guest physical addresses, and the
listeners (VFIO containers) that keep every block mapped for DMA with IOVA = GPA.

    with AddressSpace() as space:
        ram = space.add_ram(64 << 20, gpa=0)            # anonymous memory at GPA 0
        with VFIODevice("0000:00:03.0").attach(space, backend) as dev:
            ...                                          # the device can DMA to GPA 0..64M
            extra = space.add_ram(2 << 20)               # mapped into the container at once

This is QEMU's memory API reduced to what VFIO uses: each RAM block is one section, and a
`MemoryListener` is told about sections as they come (`region_add`) and go
(`region_del`). A container registers itself when it is created (and is then told about
every existing section in one call, which its batch engine maps in one crossing into C++)
and unregisters when its last device leaves. The space also keeps the list of containers,
so a device attaching later can join one (QEMU's VFIOAddressSpace).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from fastmap._closing import Closing
from fastmap.prot import Prot
from fastmap.ram import PAGE_SIZE, RamBlock, RamKind

if TYPE_CHECKING:
    from fastmap.lifecycle.container import Container

log = logging.getLogger("fastmap.address_space")


class MemoryListener(Protocol):
    """Told about RAM sections as they are added to and removed from an address space."""

    def region_add(self, sections: Sequence[RamBlock]) -> None:
        """Map `sections`; all or nothing: raise (leaving none mapped) to refuse them."""

    def region_del(self, sections: Sequence[RamBlock]) -> None:
        """Unmap `sections` (they were added before). Must not raise."""


class AddressSpace(Closing):
    """Guest physical memory: RAM blocks, the listeners that follow them, the containers."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._blocks: list[RamBlock] = []
        self._listeners: list[MemoryListener] = []
        #: VFIO containers serving this space, newest first (QEMU inserts at the head).
        self.containers: list[Container] = []

    # --- RAM ---------------------------------------------------------------------------------
    @property
    def blocks(self) -> list[RamBlock]:
        """The RAM blocks, by guest address."""
        return list(self._blocks)

    def add_ram(
        self,
        length: int,
        gpa: int | None = None,
        kind: RamKind = "anon",
        *,
        name: str | None = None,
        prot: Prot = Prot.RW,
        hugepage_size: int | None = None,
    ) -> RamBlock:
        """Allocate a RAM block at `gpa` (default: just above the highest block, aligned to
        its page size) and map it into every container. If a container refuses it, the
        ones that took it unmap it again, the memory is freed and the error propagates."""
        if gpa is None:
            align = hugepage_size or PAGE_SIZE
            top = max((b.end for b in self._blocks), default=0)
            gpa = -(-top // align) * align
        block = RamBlock(length, gpa, kind, name=name, prot=prot, hugepage_size=hugepage_size)
        try:
            self.add_block(block)
        except BaseException:
            block.close()
            raise
        return block

    def add_block(self, block: RamBlock) -> None:
        """Add an existing block (the space owns it from now on) and map it everywhere."""
        if block.closed:
            raise ValueError(f"{block!r} is closed")
        for other in self._blocks:
            if block.gpa < other.end and other.gpa < block.end:
                raise ValueError(f"{block!r} overlaps {other!r}")
        done: list[MemoryListener] = []
        try:
            for listener in self._listeners:
                listener.region_add([block])
                done.append(listener)
        except BaseException:
            for listener in reversed(done):
                listener.region_del([block])
            raise
        self._blocks.append(block)
        self._blocks.sort(key=lambda b: b.gpa)

    def remove_ram(self, block: RamBlock) -> None:
        """Unmap a block from every container, then free it. If a container cannot unmap
        it, the others map it again, the block stays, and the error propagates."""
        if block not in self._blocks:
            raise ValueError(f"{block!r} is not in address space {self.name}")
        done: list[MemoryListener] = []
        try:
            for listener in reversed(self._listeners):
                listener.region_del([block])
                done.append(listener)
        except BaseException:
            # A container still maps the block: freeing it would hand the device memory
            # the process reuses. Map it back where it was removed and keep it.
            for listener in reversed(done):
                listener.region_add([block])
            raise
        self._blocks.remove(block)
        block.close()

    def find(self, gpa: int, length: int = 1) -> RamBlock:
        """The block holding [gpa, gpa+length)."""
        for b in self._blocks:
            if b.contains(gpa, length):
                return b
        raise ValueError(f"guest range [{gpa:#x}, +{length:#x}) is not inside one RAM block")

    def read(self, gpa: int, length: int) -> bytes:
        """Guest memory at `gpa`."""
        b = self.find(gpa, length)
        return b.read(gpa - b.gpa, length)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Write guest memory at `gpa`."""
        b = self.find(gpa, len(data))
        b.write(gpa - b.gpa, data)

    # --- listeners -------------------------------------------------------------------------
    def register_listener(self, listener: MemoryListener) -> None:
        """Start following the space: `listener.region_add` gets every current section in
        one call. If it raises, the listener is not registered."""
        if any(lst is listener for lst in self._listeners):
            raise ValueError("listener already registered")
        if self._blocks:
            listener.region_add(list(self._blocks))
        self._listeners.append(listener)

    def unregister_listener(self, listener: MemoryListener) -> None:
        """Stop following: `listener.region_del` gets every current section."""
        for i, lst in enumerate(self._listeners):
            if lst is listener:
                del self._listeners[i]
                break
        else:
            return
        if self._blocks:
            listener.region_del(list(self._blocks))

    def listening(self, listener: MemoryListener) -> bool:
        return any(lst is listener for lst in self._listeners)

    # --- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Free every RAM block. Devices must be detached first (RuntimeError otherwise)."""
        if self.containers:
            raise RuntimeError(
                f"address space {self.name} still has {len(self.containers)} container(s): "
                "detach its devices first"
            )
        while self._blocks:
            self.remove_ram(self._blocks[-1])

    def __repr__(self) -> str:
        total = sum(b.length for b in self._blocks)
        return (
            f"<AddressSpace {self.name}: {len(self._blocks)} RAM blocks, {total:#x} bytes, "
            f"{len(self.containers)} containers>"
        )
