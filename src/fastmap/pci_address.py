"""PCI addresses (BDFs): the one parser every part of the Python API takes them through.

sysfs names a function "DDDD:BB:DD.F" (domain, bus, device, function; lower-case hex).
lspci, QEMU's host= option and most users write "BB:DD.F", which means domain 0000: it is
completed. Anything else is refused at once, with a ValueError naming the argument and the
value, rather than becoming a device that is not found later. The simulator's C++ machine
(csrc/sim/vfio/machine.cc, for sim-run and the C API) accepts the same forms.
"""

from __future__ import annotations

import re

_BDF = re.compile(
    r"(?:(?P<domain>[0-9a-f]{4}):)?(?P<bus>[0-9a-f]{2}):(?P<dev>[01][0-9a-f])\.(?P<fn>[0-7])"
)


def normalize_bdf(value: object, arg: str = "bdf") -> str:
    """`value` as sysfs names it ("0000:00:03.0"); `arg` is the argument's name in errors."""
    if not isinstance(value, str):
        raise TypeError(
            f"{arg} must be a PCI address str like '0000:00:03.0', not {type(value).__name__}"
        )
    m = _BDF.fullmatch(value.strip().lower())
    if m is None:
        raise ValueError(
            f"{arg}={value!r} is not a PCI address: use DDDD:BB:DD.F as in "
            "/sys/bus/pci/devices (e.g. '0000:00:03.0'; lspci's '00:03.0' means domain 0000)"
        )
    return f"{m['domain'] or '0000'}:{m['bus']}:{m['dev']}.{m['fn']}"


def is_canonical_bdf(name: str) -> bool:
    """Whether `name` is a PCI address exactly as sysfs writes one (for directory listings)."""
    m = _BDF.fullmatch(name)
    return m is not None and m["domain"] is not None
