"""PCI addresses: every place the Python API takes one goes through fastmap.pci_address, so
lspci's "00:03.0" means "0000:00:03.0" everywhere and a malformed one is a ValueError naming
the argument and the value; the simulator's C++ machine (sim-run, the C API) reads the same
forms."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from fastmap.host.devbind import bind_device, unbind_device
from fastmap.host.files import HostFiles
from fastmap.lifecycle.device import VFIODevice
from fastmap.pci_address import is_canonical_bdf, normalize_bdf
from fastmap.sim import SimKernel

GOOD = [
    ("0000:00:03.0", "0000:00:03.0"),
    ("00:03.0", "0000:00:03.0"),
    ("0000:0A:1F.7", "0000:0a:1f.7"),
    ("0a:1f.7", "0000:0a:1f.7"),
    ("0001:02:03.4", "0001:02:03.4"),
    (" 00:03.0\n", "0000:00:03.0"),  # as read from a file or a command line
]
BAD = ["0:3.0", "00:03", "0000:00:03", "0000:00:03.8", "00:20.0", "000g:00:03.0",
       "0000-00:03.0", "0000:00:03.0.0", "edu", ""]  # fmt: skip


def _names(arg: str, value: str) -> str:
    return re.escape(f"{arg}={value!r} is not a PCI address")


@pytest.mark.parametrize(("given", "canonical"), GOOD)
def test_forms(given: str, canonical: str) -> None:
    assert normalize_bdf(given) == canonical
    assert is_canonical_bdf(canonical)
    assert is_canonical_bdf(given) == (given == canonical)  # sysfs's own spelling only


@pytest.mark.parametrize("bad", BAD)
def test_malformed_is_a_value_error_naming_argument_and_value(bad: str) -> None:
    with pytest.raises(ValueError, match=_names("bdf", bad)):
        normalize_bdf(bad)
    with pytest.raises(ValueError, match=_names("host", bad)):
        VFIODevice(bad, kernel=SimKernel())
    with pytest.raises(TypeError, match="bdf must be a PCI address str"):
        normalize_bdf(3)


@pytest.mark.parametrize(("given", "canonical"), GOOD)
def test_the_machine_takes_every_form(given: str, canonical: str) -> None:
    sim = SimKernel()
    m = sim.machine
    assert m.add_pci_device(bdf=given)["bdf"] == canonical
    assert sim.pci_devices() == [canonical]
    # Every later call names the device in any form too.
    assert m.dma_faults(given) == [] and sim.dma_faults(given) == []
    assert len(m.edu_buffer(given)) == 4096
    assert m.pci_command(given) == m.pci_command(canonical)
    assert m.dma_writer(given, [(0, 4096)]).running is False
    assert VFIODevice(given, kernel=sim).name == canonical
    with pytest.raises(FileExistsError):
        m.add_pci_device(bdf=canonical)


@pytest.mark.parametrize("bad", [b for b in BAD if b])  # "" asks for the next free slot
def test_the_machine_refuses_a_malformed_bdf_by_name(bad: str) -> None:
    sim = SimKernel()
    with pytest.raises(ValueError, match=_names("bdf", bad)):
        sim.machine.add_pci_device(bdf=bad)
    assert sim.pci_devices() == []
    with pytest.raises(ValueError, match=_names("bdf", bad)):
        sim.dma_faults(bad)


@pytest.mark.parametrize(("given", "canonical"), [g for g in GOOD if g[0] == g[0].strip()])
def test_the_cpp_machine_reads_the_same_forms(given: str, canonical: str) -> None:
    """The raw machine (what sim-run's --device edu,bdf=... and the C API reach) agrees with
    the Python parser on every form without surrounding blanks."""
    core = SimKernel().sim.machine
    assert core.add_pci_device(bdf=given)["bdf"] == canonical


@pytest.mark.parametrize("bad", [b for b in BAD if b])
def test_the_cpp_machine_refuses_the_same_forms(bad: str) -> None:
    with pytest.raises(OSError) as e:
        SimKernel().sim.machine.add_pci_device(bdf=bad)
    assert e.value.errno == errno.EINVAL


def test_bind_and_unbind_parse_the_same_way(tmp_path: Path) -> None:
    """Refused before any file is touched (the root is an empty directory)."""
    files = HostFiles(str(tmp_path))
    for call in (bind_device, unbind_device):
        with pytest.raises(ValueError, match=_names("bdf", "00:03")):
            call("00:03", files)
    assert list(tmp_path.iterdir()) == []
