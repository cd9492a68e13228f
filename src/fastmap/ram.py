"""Guest RAM blocks: host memory of this process placed at a guest physical address.

A `RamBlock` is `fastmap.DmaMemory` (which owns the memory, and for the file-backed kinds the
file) placed at `gpa`:

* "anon":    private anonymous memory (what QEMU uses for plain `-m` RAM);
* "thp":     the same, advised MADV_HUGEPAGE;
* "memfd":   a memfd mapped shared (QEMU's memory-backend-memfd); `fd` is kept so the memory
             can also be mapped with IOMMU_IOAS_MAP_FILE;
* "hugetlb": a memfd on hugetlbfs (MFD_HUGETLB), where the host has free huge pages.

The memory is the same whichever kernel the devices use: the simulated kernel runs in
this process and pins and translates these very pages.

Lifetime: as for all DmaMemory, every mapping of a block holds one of its leases (`lease()`,
passed as `Ioas.map(..., keep=lease)`), and the engine drops a lease only with the unmap that
removes its mapping from the kernel. `close()` refuses (RamInUseError) while any lease is
held: the memory would be unmapped from the process while a device can still write it, and
the next mmap at that address would receive those writes. Unmap first
(`AddressSpace.remove_ram` unmaps from every container first).
"""

from __future__ import annotations

from fastmap import _checks
from fastmap.dma_memory import (
    PAGE_SIZE,
    DmaMemory,
    MemoryKind,
    MemoryLease,
    RamUnavailableError,
    default_hugepage_size,
    free_hugepages,
)
from fastmap.prot import Prot
from fastmap.prot import check as check_prot

__all__ = [
    "PAGE_SIZE",
    "RAM_KINDS",
    "RamBlock",
    "RamKind",
    "RamLease",
    "RamUnavailableError",
    "default_hugepage_size",
    "free_hugepages",
]

RamKind = MemoryKind
RAM_KINDS: tuple[RamKind, ...] = ("anon", "thp", "memfd", "hugetlb")
#: The lease a mapping of a block holds (one class for all DmaMemory).
RamLease = MemoryLease


class RamBlock(DmaMemory):
    """`length` bytes of host memory that a guest sees at `gpa` (IOVA = GPA for devices)."""

    def __init__(
        self,
        length: int,
        gpa: int,
        kind: RamKind = "anon",
        *,
        name: str | None = None,
        prot: Prot = Prot.RW,
        hugepage_size: int | None = None,
    ) -> None:
        if kind not in RAM_KINDS:
            raise ValueError(f"RAM kind must be one of {RAM_KINDS}, not {kind!r}")
        page = (hugepage_size or default_hugepage_size()) if kind == "hugetlb" else PAGE_SIZE
        length = _checks.integer("length", length)
        gpa = _checks.integer("gpa", gpa)
        if gpa + length > 1 << 64:
            raise ValueError(
                f"gpa={gpa:#x} + length={length:#x} runs past the 64-bit address space"
            )
        if length <= 0 or length % page:
            raise ValueError(f"RAM length {length:#x} must be a positive multiple of {page:#x}")
        if gpa < 0 or gpa % page:
            raise ValueError(f"guest address {gpa:#x} must be aligned to {page:#x}")
        self.gpa = gpa
        #: what devices may do with it (QEMU's read-only RAM is Prot.READ)
        self.prot = check_prot(prot)
        super().__init__(
            length,
            kind,
            align=page,
            name=name or f"{kind}@{gpa:#x}",
            hugepage_size=hugepage_size if kind == "hugetlb" else None,
        )

    @property
    def end(self) -> int:
        """The first guest address after the block."""
        return self.gpa + self.length

    def contains(self, gpa: int, length: int = 1) -> bool:
        return self.gpa <= gpa and gpa + length <= self.end

    def __repr__(self) -> str:
        ro = "" if self.prot & Prot.WRITE else " ro"
        return f"<RamBlock {self.name} gpa [{self.gpa:#x}, {self.end:#x}) {self.kind}{ro}>"
