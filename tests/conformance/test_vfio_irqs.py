"""VFIO device interrupts (vfio-pci's GET_IRQ_INFO and SET_IRQS) with the edu device.

What vfio-pci reports for edu (a conventional PCI function with INTx pin A and one MSI
vector, no MSI-X), the errno of every malformed SET_IRQS, and interrupts arriving on
eventfds: edu's raise register (0x60) interrupts through MSI when MSI is enabled, else
asserts INTx, which vfio-pci automasks until the user unmasks; the acknowledge register
(0x64) deasserts it. Runs on the simulator and, in the VM, on Linux with QEMU's edu.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator

import pytest

from fastmap import uapi
from fastmap.kernel import Fd, Kernel
from fastmap.lifecycle.irq import DeviceIrq, irq_info, raw_set_irqs, set_irqs

from .helpers import bind_iommufd, raises_errno

INTX, MSI, MSIX = (
    uapi.VFIO_PCI_INTX_IRQ_INDEX,
    uapi.VFIO_PCI_MSI_IRQ_INDEX,
    uapi.VFIO_PCI_MSIX_IRQ_INDEX,
)
ERR, REQ = uapi.VFIO_PCI_ERR_IRQ_INDEX, uapi.VFIO_PCI_REQ_IRQ_INDEX
TRIGGER = uapi.VFIO_IRQ_SET_ACTION_TRIGGER
BAR0 = 0  # region offset of BAR0 (index 0 << 40)
CONFIG = uapi.VFIO_PCI_CONFIG_REGION_INDEX << 40
IRQ_STATUS, IRQ_RAISE, IRQ_ACK = 0x24, 0x60, 0x64
MEMORY, MASTER = 0x2, 0x4  # PCI command register bits
# Bounds a wait for an interrupt that must come (never reached when things work).
DEADLINE = 10.0


@pytest.fixture
def dev(kernel: Kernel, vfio_device: str, iommufd: Fd) -> Iterator[Fd]:
    """edu's cdev, bound, with memory decoding (BAR0 answers) and bus mastering on (an MSI
    is a memory write by the device: without bus mastering it is lost)."""
    with kernel.open_fd(vfio_device) as fd:
        bind_iommufd(fd, iommufd.number)
        _set_command(fd, MEMORY | MASTER)
        # QEMU's edu has no reset method, so vfio-pci's open leaves its state alone: an
        # interrupt an earlier user raised (a DMA's 0x100) is still pending. Start clean.
        _w32(fd, IRQ_ACK, 0xFFFFFFFF)
        assert _r32(fd, IRQ_STATUS) == 0
        yield fd


def _set_command(fd: Fd, bits: int) -> None:
    command = int.from_bytes(fd.pread(2, CONFIG + 4), "little") & ~(MEMORY | MASTER)
    fd.pwrite((command | bits).to_bytes(2, "little"), CONFIG + 4)


def _w32(fd: Fd, off: int, value: int) -> None:
    assert fd.pwrite(value.to_bytes(4, "little"), BAR0 + off) == 4


def _r32(fd: Fd, off: int) -> int:
    return int.from_bytes(fd.pread(4, BAR0 + off), "little")


@pytest.fixture
def not_an_eventfd() -> Iterator[int]:
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    yield fd
    os.close(fd)


def test_irq_info(dev: Fd) -> None:
    eventfd, noresize = uapi.VFIO_IRQ_INFO_EVENTFD, uapi.VFIO_IRQ_INFO_NORESIZE
    intx = irq_info(dev, INTX)
    assert (intx.count, intx.flags) == (
        1,
        eventfd | uapi.VFIO_IRQ_INFO_MASKABLE | uapi.VFIO_IRQ_INFO_AUTOMASKED,
    )
    assert (irq_info(dev, MSI).count, irq_info(dev, MSI).flags) == (1, eventfd | noresize)
    # No MSI-X capability: the index exists with no vectors.
    assert (irq_info(dev, MSIX).count, irq_info(dev, MSIX).flags) == (0, eventfd | noresize)
    assert (irq_info(dev, REQ).count, irq_info(dev, REQ).flags) == (1, eventfd | noresize)
    for index in (ERR, uapi.VFIO_PCI_NUM_IRQS):  # ERR is for PCI Express functions only
        with raises_errno(errno.EINVAL):
            irq_info(dev, index)


def test_set_irqs_errnos(dev: Fd, not_an_eventfd: int) -> None:
    none, boolean = uapi.VFIO_IRQ_SET_DATA_NONE, uapi.VFIO_IRQ_SET_DATA_BOOL
    efd = uapi.VFIO_IRQ_SET_DATA_EVENTFD
    bad = [
        (TRIGGER | none, uapi.VFIO_PCI_NUM_IRQS, 0, 0, b""),  # no such index
        (TRIGGER | none, MSIX, 0, 0, b""),  # MSI-X has no vectors: start 0 is past them
        (TRIGGER | none, ERR, 0, 0, b""),  # neither has ERR
        (TRIGGER | none, MSI, 1, 0, b""),  # start past the vectors
        (TRIGGER | efd, MSI, 0, 2, b"\xff" * 8),  # more vectors than MSI offers
        (TRIGGER | none | boolean, MSI, 0, 1, b"\x01"),  # two data types
        (TRIGGER | (1 << 6), MSI, 0, 0, b""),  # an unknown flag
        (TRIGGER | efd, MSI, 0, 1, b""),  # argsz leaves no room for the eventfd
        (TRIGGER | none, MSI, 0, 1, b""),  # loopback on MSI while it is off
        (uapi.VFIO_IRQ_SET_ACTION_UNMASK | none, INTX, 0, 1, b""),  # INTx is off
        (TRIGGER | none, REQ, 0, 1, b""),  # no request eventfd to signal
    ]
    for flags, index, start, count, data in bad:
        with raises_errno(errno.EINVAL):
            raw_set_irqs(dev, flags, index, start, count, data)
    # Actions vfio-pci has no handler for.
    for flags, index in [
        (uapi.VFIO_IRQ_SET_ACTION_MASK | none, MSI),
        (uapi.VFIO_IRQ_SET_ACTION_UNMASK | none, MSI),
        (none, MSI),
        (uapi.VFIO_IRQ_SET_ACTION_MASK | TRIGGER | none, MSI),
    ]:
        with raises_errno(errno.ENOTTY):
            raw_set_irqs(dev, flags, index, 0, 1, b"")
    # The eventfd itself: not open, then not an eventfd.
    with raises_errno(errno.EBADF):
        set_irqs(dev, MSI, TRIGGER, eventfds=[0x7FFF_FFF0])
    with raises_errno(errno.EINVAL):
        set_irqs(dev, MSI, TRIGGER, eventfds=[not_an_eventfd])
    with raises_errno(errno.EINVAL):
        set_irqs(dev, INTX, TRIGGER, eventfds=[not_an_eventfd])
    # A failed enable left everything off: MSI can still be enabled.
    with DeviceIrq(dev, MSI) as irq:
        irq.trigger()
        assert irq.wait(DEADLINE) == 1


def test_msi_from_the_raise_register(dev: Fd) -> None:
    with DeviceIrq(dev, MSI) as irq:
        assert irq.take() == 0
        _w32(dev, IRQ_RAISE, 0x1)
        assert irq.wait(DEADLINE) >= 1
        assert _r32(dev, IRQ_STATUS) == 0x1
        # MSI is an edge per message: every raise sends one, acknowledged or not.
        _w32(dev, IRQ_RAISE, 0x2)
        assert irq.wait(DEADLINE) >= 1
        _w32(dev, IRQ_ACK, 0x3)
        assert _r32(dev, IRQ_STATUS) == 0
        # Without bus mastering the message never leaves the device.
        _set_command(dev, MEMORY)
        _w32(dev, IRQ_RAISE, 0x1)
        assert _r32(dev, IRQ_STATUS) == 0x1
        _set_command(dev, MEMORY | MASTER)
        _w32(dev, IRQ_ACK, 0x1)
        _w32(dev, IRQ_RAISE, 0x8)  # the proof that the lost one is not just late
        assert irq.wait(DEADLINE) == 1
        _w32(dev, IRQ_ACK, 0x8)
        # Only one type at a time.
        with raises_errno(errno.EINVAL):
            DeviceIrq(dev, INTX)
    # Disabled: a raise reaches nobody, and INTx can be enabled now.
    with DeviceIrq(dev, INTX) as intx:
        assert intx.take() == 0
        _w32(dev, IRQ_ACK, 0xFFFFFFFF)


def test_intx_is_automasked(dev: Fd) -> None:
    with DeviceIrq(dev, INTX) as irq:
        _w32(dev, IRQ_RAISE, 0x1)
        assert irq.wait(DEADLINE) == 1
        # Masked by vfio-pci: the still-asserted line and new causes signal nothing.
        _w32(dev, IRQ_RAISE, 0x2)
        assert irq.take() == 0
        # Unmasking while the line is asserted re-signals and stays masked.
        irq.unmask()
        assert irq.wait(DEADLINE) == 1
        # Acknowledged in the device, then unmasked: quiet until the next raise.
        _w32(dev, IRQ_ACK, 0x3)
        irq.unmask()
        assert irq.take() == 0
        _w32(dev, IRQ_RAISE, 0x100)
        assert irq.wait(DEADLINE) == 1
        _w32(dev, IRQ_ACK, 0x100)
        irq.unmask()
        # MASK then loopback TRIGGER: the eventfd is signalled regardless of the mask.
        set_irqs(dev, INTX, uapi.VFIO_IRQ_SET_ACTION_MASK, count=1)
        irq.trigger()
        assert irq.wait(DEADLINE) == 1
        with raises_errno(errno.ENOTTY):  # a mask eventfd is not implemented
            set_irqs(dev, INTX, uapi.VFIO_IRQ_SET_ACTION_MASK, eventfds=[irq.fileno()])


def test_wait_async(dev: Fd) -> None:
    async def main(irq: DeviceIrq) -> int:
        waiter = asyncio.ensure_future(irq.wait_async())
        await asyncio.sleep(0)
        _w32(dev, IRQ_RAISE, 0x1)
        return await asyncio.wait_for(waiter, DEADLINE)

    with DeviceIrq(dev, MSI) as irq:
        assert asyncio.run(main(irq)) >= 1
        _w32(dev, IRQ_ACK, 0x1)


def test_close_releases_interrupts(kernel: Kernel, vfio_device: str, iommufd: Fd) -> None:
    """The last close of the device turns its interrupts off: a new open enables MSI
    afresh, and the old eventfd hears nothing more."""
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        with kernel.open_fd(vfio_device) as fd:
            bind_iommufd(fd, iommufd.number)
            set_irqs(fd, MSI, TRIGGER, eventfds=[efd])
        with kernel.open_fd(vfio_device) as fd:
            bind_iommufd(fd, iommufd.number)
            with raises_errno(errno.EINVAL):  # MSI is off again: no loopback
                set_irqs(fd, MSI, TRIGGER, count=1)
            set_irqs(fd, MSI, TRIGGER, eventfds=[efd])
            set_irqs(fd, MSI, TRIGGER, count=1)
            assert os.read(efd, 8) == (1).to_bytes(8, "little")
    finally:
        os.close(efd)
