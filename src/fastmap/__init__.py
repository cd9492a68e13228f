"""fastmap: a high-performance DMA mapping engine for Linux userspace."""

from __future__ import annotations

__version__ = "0.1.0"
