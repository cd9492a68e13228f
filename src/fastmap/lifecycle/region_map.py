"""A VFIO device region mmap()ed into this process: a BAR as a memoryview or numpy array.

    with dev.map_region(uapi.VFIO_PCI_BAR0_REGION_INDEX) as bar:
        regs = bar.array("<u4")          # 32-bit registers
        ident = int(regs[0])             # one load from the device
        regs[0x60 // 4] = 1              # one store: edu raises its interrupt

On the real kernel the mapping is the BAR itself. On the simulator it is a trapped mapping
whose every load and store reaches the device model as a register access of the
register's width (csrc/sim/core/mmio_trap.h: x86-64 only, one instruction at a time).
Access the registers with aligned loads and stores of their width, as any driver must;
views taken from the mapping must not be used after `close()`, which unmaps it.
"""

from __future__ import annotations

import ctypes
import mmap
from typing import TYPE_CHECKING, Any

from fastmap._closing import Closing
from fastmap.kernel import Fd

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from fastmap.lifecycle.device import RegionInfo


class RegionMapping(Closing):
    """`length` bytes of a region (all of it by default) mapped shared, read-write unless
    `writable=False`."""

    def __init__(
        self,
        fd: Fd,
        region: RegionInfo,
        *,
        offset: int = 0,
        length: int | None = None,
        writable: bool = True,
    ) -> None:
        if not region.mmap:
            raise ValueError(f"region {region.index} does not allow mmap (flags {region.flags:#x})")
        page = mmap.PAGESIZE
        if offset < 0 or offset % page:
            raise ValueError(f"offset {offset:#x} is not a multiple of the page size {page:#x}")
        if length is None:
            length = -(-region.size // page) * page - offset
        if length <= 0 or offset + length > -(-region.size // page) * page:
            raise ValueError(
                f"[{offset:#x}, +{length:#x}) is outside region {region.index} "
                f"({region.size:#x} bytes)"
            )
        self.region = region
        self.offset = offset
        self.length = length
        self._kernel = fd.kernel
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self._addr: int | None = fd.kernel.mmap(fd.number, length, region.offset + offset, prot)

    @property
    def addr(self) -> int:
        """The mapping's address; raises once closed."""
        if self._addr is None:
            raise ValueError("the region mapping is closed")
        return self._addr

    @property
    def memoryview(self) -> memoryview:
        """The mapping as bytes (cast it: `.cast("I")` for 32-bit registers)."""
        return memoryview((ctypes.c_uint8 * self.length).from_address(self.addr)).cast("B")

    def array(self, dtype: npt.DTypeLike = "<u4") -> np.ndarray[Any, Any]:
        """The mapping as a numpy array of `dtype` (needs numpy)."""
        import numpy as np

        return np.frombuffer(self.memoryview, dtype=dtype)

    def read32(self, off: int) -> int:
        return int(ctypes.c_uint32.from_address(self._at(off, 4)).value)

    def write32(self, off: int, value: int) -> None:
        ctypes.c_uint32.from_address(self._at(off, 4)).value = value

    def read64(self, off: int) -> int:
        return int(ctypes.c_uint64.from_address(self._at(off, 8)).value)

    def write64(self, off: int, value: int) -> None:
        ctypes.c_uint64.from_address(self._at(off, 8)).value = value

    def _at(self, off: int, size: int) -> int:
        if off < 0 or off % size or off + size > self.length:
            raise ValueError(
                f"a {size}-byte access at {off:#x} is unaligned or outside the mapping"
            )
        return self.addr + off

    def close(self) -> None:
        addr, self._addr = self._addr, None
        if addr is not None:
            self._kernel.munmap(addr, self.length)

    def __repr__(self) -> str:
        where = f"at {self._addr:#x}" if self._addr is not None else "closed"
        return (
            f"<RegionMapping region {self.region.index} +{self.offset:#x} {self.length:#x} {where}>"
        )
