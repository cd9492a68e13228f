"""fastmap: a high-performance DMA mapping engine for Linux userspace."""

from __future__ import annotations

__version__ = "0.1.0"


def get_include() -> str:
    """The directory holding fastmap_capi.h and capi.pxd, for C and Cython clients of
    fastmap's C-level API (add it to include_dirs)."""
    import os

    return os.path.dirname(os.path.abspath(__file__))
