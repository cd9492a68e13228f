"""Type stubs for fastmap._core, the private C++ extension (csrc/bindings/)."""

from typing_extensions import Buffer

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
