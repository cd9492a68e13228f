"""fastmap: a high-performance DMA mapping engine for Linux userspace."""

from __future__ import annotations

__version__ = "0.1.0"


def get_include() -> str:
    """The directory holding fastmap_capi.h, for C and Cython clients of fastmap's C-level
    API (add it to include_dirs; capi.pxd is cimported from the package). Installed, the
    header is package data; in a source checkout (editable install) it is csrc/capi."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.exists(os.path.join(here, "fastmap_capi.h")):
        return here
    return os.path.join(os.path.dirname(os.path.dirname(here)), "csrc", "capi")
