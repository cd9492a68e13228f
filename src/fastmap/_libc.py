"""libc's mmap/munmap through ctypes, declared once: for memory at an address fastmap chooses
or aligns (guest RAM blocks, aligned test and benchmark buffers), which Python's mmap module
cannot give."""

from __future__ import annotations

import ctypes
import mmap

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
libc.mmap.restype = ctypes.c_void_p
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.munmap.restype = ctypes.c_int
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.madvise.restype = ctypes.c_int

MAP_FAILED = ctypes.c_void_p(-1).value
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
