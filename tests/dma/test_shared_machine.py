"""One simulated machine per process: separately opened kernels see the same devices, and
an explicit SimKernel() is a machine of its own (each test starts with a fresh shared one,
tests/conftest.py)."""

from __future__ import annotations

from fastmap import AddressSpace, IOMMUFDBackend, SimKernel, VFIODevice, open_kernel, shared_kernel


def test_open_kernel_is_one_machine() -> None:
    a, b = open_kernel("sim"), open_kernel("sim")
    assert a is b is shared_kernel()


def test_a_device_plugged_in_is_seen_by_objects_opened_later() -> None:
    shared_kernel().machine.add_pci_device(bdf="0000:00:07.0")
    with IOMMUFDBackend(kernel="sim") as be, AddressSpace() as space:
        space.add_ram(1 << 20, 0x100000)
        with VFIODevice("0000:00:07.0", kernel="sim").attach(space, be) as dev:
            assert dev.kernel is be.kernel is shared_kernel()
            assert dev.read_device_info().num_regions > 0


def test_an_explicit_sim_kernel_is_isolated() -> None:
    shared_kernel().machine.add_pci_device(bdf="0000:00:07.0")
    assert "0000:00:07.0" in shared_kernel().pci_devices()
    assert SimKernel().pci_devices() == []
