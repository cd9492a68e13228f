"""Which kernel the ioctl seam talks to: the real one, or the embedded simulator.

`open_kernel()` picks it: the `kind` asked for, else $FASTMAP_KERNEL, else the real kernel
where /dev/iommu exists and the simulator elsewhere. It lives here, above both `kernel`
(the real kernel and the common face) and `sim` (the simulated one), so that neither of
those imports the other.
"""

from __future__ import annotations

import os

from fastmap.kernel import Kernel, KernelKind, RealKernel
from fastmap.sim import shared_kernel

__all__ = ["default_kind", "open_kernel"]


def default_kind() -> KernelKind:
    """$FASTMAP_KERNEL if set, else 'real' where /dev/iommu exists, else 'sim'."""
    env = os.environ.get("FASTMAP_KERNEL", "")
    if env == "real":
        return "real"
    if env == "sim":
        return "sim"
    if env:
        raise ValueError(f"FASTMAP_KERNEL must be 'real' or 'sim', not {env!r}")
    return "real" if os.path.exists("/dev/iommu") else "sim"


def open_kernel(kind: KernelKind | None = None) -> Kernel:
    """The kernel to use: `kind`, else $FASTMAP_KERNEL, else real if /dev/iommu exists.

    The simulator is the process's one simulated machine (`fastmap.sim.shared_kernel()`):
    every call returns the same one, so separately opened objects see the same devices, as
    on a real host. `fastmap.sim.SimKernel()` makes an isolated machine instead."""
    kind = kind or default_kind()
    if kind == "real":
        return RealKernel()
    if kind == "sim":
        return shared_kernel()
    raise ValueError(f"kernel kind must be 'real' or 'sim', not {kind!r}")
