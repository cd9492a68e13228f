"""The README's Python examples run as written on the simulator, with a device attached to
every IOAS they make (as a user's would be, once a driver binds one), so the quick start
cannot drift from the API nor depend on an IOAS without a domain (which takes any byte
alignment, where a device's domain takes whole pages only). On the real kernel (the VM
tier) they run the same way with the VM's edu device, whose address replaces the README's
`BDF`, as a user pasting the example would replace it."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastmap import Ioas, IOMMUFDBackend, KernelError, open_kernel, shared_kernel
from fastmap.kernel import Fd, Kernel
from fastmap.lifecycle import vfio_iommufd
from fastmap.lifecycle.sysfs import PCI_DEVICES, sysfs_for
from tests.conformance.devices import find_edu
from tests.facilities import missing

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)


README_BDF = '"0000:00:03.0"'


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2
    assert any(f"BDF = {README_BDF}" in b for b in BLOCKS)


def attach_on_alloc(
    monkeypatch: pytest.MonkeyPatch, kernel: Kernel, new_bdf: Callable[[int], str]
) -> Iterator[list[int]]:
    """Every IOAS an IOMMUFDBackend allocates gets the device `new_bdf(n)` (n: IOASes so
    far) bound and attached (the kernel's auto domain), detached again just before the IOAS
    is closed. Yields the alignment each IOAS had once its device was attached."""
    devices: dict[int, Fd] = {}
    alignments: list[int] = []
    alloc, close = IOMMUFDBackend.alloc_ioas, Ioas.close

    def alloc_with_device(backend: IOMMUFDBackend) -> Ioas:
        ioas = alloc(backend)
        bdf = new_bdf(len(alignments))
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


@pytest.fixture
def device_on_every_ioas(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Simulator: each IOAS gets an edu device of its own."""
    kernel = shared_kernel()

    def plug(n: int) -> str:
        bdf = f"0000:00:{0x10 + n:02x}.0"
        kernel.machine.add_pci_device(bdf=bdf)
        return bdf

    yield from attach_on_alloc(monkeypatch, kernel, plug)


@pytest.fixture
def real_edu() -> str:
    """The real kernel's edu device bound to vfio-pci (the VM tier's), by address."""
    if not os.path.exists("/dev/iommu"):
        missing("iommu", "no /dev/iommu here (run inside the VM: tools/vmtest/run.sh)")
    bdf = find_edu()
    if bdf is None or not os.path.isdir(f"{PCI_DEVICES}/{bdf}/vfio-dev"):
        missing("vfio", "no edu device bound to vfio-pci")
    return bdf


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


def behind_virtio_iommu(bdf: str) -> bool:
    """Whether the PCI device `bdf` sits behind a virtio-iommu (its driver names it)."""
    unit = os.path.realpath(f"{PCI_DEVICES}/{bdf}/iommu")
    driver = os.path.realpath(f"/sys/class/iommu/{os.path.basename(unit)}/device/driver")
    return os.path.basename(driver) == "virtio_iommu" or "virtio" in unit


@pytest.mark.real_kernel
@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs_on_the_real_kernel_with_a_device_attached(
    code: str, monkeypatch: pytest.MonkeyPatch, real_edu: str
) -> None:
    monkeypatch.setenv("FASTMAP_KERNEL", "real")
    kernel = open_kernel("real")

    def the_edu(n: int) -> str:
        assert n == 0, "the VM has one edu: an example with two IOASes at once needs two"
        return real_edu

    if "VFIODevice(" in code:  # the example attaches the device itself
        code = code.replace(f"BDF = {README_BDF}", f'BDF = "{real_edu}"')
        assert real_edu in code
        if not behind_virtio_iommu(real_edu):
            exec(compile(code, f"{README.name} example", "exec"), {"__name__": "readme"})
            return
        # virtio-iommu on 6.12 gives an allocated HWPT (QEMU's and fastmap's attach) no
        # aperture: the attach must say so, and how to attach instead.
        with pytest.raises(KernelError) as info:
            exec(compile(code, f"{README.name} example", "exec"), {"__name__": "readme"})
        said = "\n".join([str(info.value), *getattr(info.value, "__notes__", [])])
        assert "offers only IOVA 0" in said and "hwpt_alloc=False" in said, said
        return
    attached = attach_on_alloc(monkeypatch, kernel, the_edu)
    alignments = next(attached)
    try:
        exec(compile(code, f"{README.name} example", "exec"), {"__name__": "readme"})
    finally:
        next(attached, None)
    assert alignments and all(a > 1 for a in alignments)  # the edu's domain constrained it
