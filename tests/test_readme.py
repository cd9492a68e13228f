"""The README's Python examples run as written on the simulator, with a device attached to
every IOAS they make (as a user's would be, once a driver binds one), so the quick start
cannot drift from the API nor depend on an IOAS without a domain (which takes any byte
alignment, where a device's domain takes whole pages only)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastmap import Ioas, IOMMUFDBackend, shared_kernel
from fastmap.kernel import Fd
from fastmap.lifecycle import vfio_iommufd
from fastmap.lifecycle.sysfs import PCI_DEVICES, sysfs_for

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.fixture
def device_on_every_ioas(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every IOAS an IOMMUFDBackend allocates gets an edu device of its own attached (the
    kernel's auto domain), detached again just before the IOAS is closed. Yields the
    alignment each IOAS had once its device was attached."""
    kernel = shared_kernel()
    devices: dict[int, Fd] = {}
    alignments: list[int] = []
    alloc, close = IOMMUFDBackend.alloc_ioas, Ioas.close

    def alloc_with_device(backend: IOMMUFDBackend) -> Ioas:
        ioas = alloc(backend)
        bdf = f"0000:00:{0x10 + len(alignments):02x}.0"
        kernel.machine.add_pci_device(bdf=bdf)
        fd = vfio_iommufd.open_cdev(kernel, sysfs_for(kernel), f"{PCI_DEVICES}/{bdf}")
        vfio_iommufd.bind(fd, backend)
        vfio_iommufd.attach_pt(fd, ioas.id)
        devices[id(ioas)] = fd
        alignments.append(ioas.iova_alignment)
        return ioas

    def close_after_device(ioas: Ioas) -> None:
        fd = devices.pop(id(ioas), None)
        if fd is not None:
            vfio_iommufd.detach_pt(fd)
            fd.close()
        close(ioas)

    monkeypatch.setattr(IOMMUFDBackend, "alloc_ioas", alloc_with_device)
    monkeypatch.setattr(Ioas, "close", close_after_device)
    yield alignments
    assert not devices, "an IOAS the README made was left open"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTMAP_KERNEL", "sim")
    exec(compile(code, f"{README.name} example", "exec"), {"__name__": "readme"})


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs_with_a_device_attached(
    code: str, monkeypatch: pytest.MonkeyPatch, device_on_every_ioas: list[int]
) -> None:
    monkeypatch.setenv("FASTMAP_KERNEL", "sim")
    exec(compile(code, f"{README.name} example", "exec"), {"__name__": "readme"})
    assert device_on_every_ioas, "the example made no IOAS"
    assert all(a > 1 for a in device_on_every_ioas)  # the domain did constrain it
