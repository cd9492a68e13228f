"""Type stubs for fastmap._core, the private C++ extension (csrc/bindings/)."""

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

_U64s = npt.ArrayLike
_BatchError = tuple[int, int, str, bool] | None

# --- bind_uapi.cc -------------------------------------------------------------------------
def uapi_structs() -> list[tuple[str, int, bool, list[tuple[str, int, int, str, int]]]]:
    """[(name, size, is_union, [(field, offset, size, type, count)])] in dependency order"""

def uapi_constants() -> dict[str, int]: ...

# --- bind_seam.cc -------------------------------------------------------------------------
class Kernel:
    @property
    def name(self) -> str: ...
    def open(self, path: str, flags: int) -> int: ...
    def close(self, fd: int) -> int: ...
    def ioctl(self, fd: int, request: int, arg: Buffer | int | None) -> int: ...
    def pread(self, fd: int, count: int, offset: int) -> bytes | int: ...
    def pwrite(self, fd: int, data: Buffer, offset: int) -> int: ...

class RealKernel(Kernel):
    def __init__(self) -> None: ...

# --- bind_sim.cc --------------------------------------------------------------------------
class SimConfig:
    kernel_version: int
    transparent_hugepage: bool
    iommufd_test: bool
    dma_entry_limit: int
    cap_sys_resource: bool
    cap_ipc_lock: bool
    rlimit_memlock: int
    def __init__(self) -> None: ...

class SimKernel(Kernel):
    def __init__(self, config: SimConfig = ...) -> None: ...
    @property
    def config(self) -> SimConfig: ...

# --- bind_mapper.cc -----------------------------------------------------------------------
class Segment:
    @property
    def iova(self) -> int: ...
    @property
    def va(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def prot(self) -> int: ...
    @property
    def run_iova(self) -> int: ...

class IoasMapper:
    def __init__(self, kernel: Kernel, iommufd: int, ioas_id: int) -> None: ...
    @property
    def ioas_id(self) -> int: ...
    def map(
        self,
        vas: _U64s,
        lengths: _U64s,
        iovas: _U64s | None,
        prot: int,
        coalesce: bool = False,
        threads: int = 1,
    ) -> tuple[npt.NDArray[np.uint64], _BatchError]:
        """-> (iovas, None | (errno, index, call, rollback_failed))"""
    def unmap(self, iovas: _U64s, lengths: _U64s) -> _BatchError: ...
    def unmap_all(self) -> int: ...
    def __len__(self) -> int: ...
    def segments(self) -> list[Segment]: ...
