"""Device interrupts through VFIO: IRQ info, VFIO_DEVICE_SET_IRQS, and eventfds to wait on.

A driver enables one interrupt type (INTx, MSI or MSI-X) with an eventfd per vector; the
kernel (or the simulated device) signals the eventfd when the device interrupts. Waiting
needs no polling of device registers:

    with dev.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX) as irq:
        ...start a DMA with its interrupt bit...
        assert irq.wait(timeout=5.0)          # blocks in poll(2) on the eventfd

`DeviceIrq.fileno()` is the eventfd, so an asyncio loop can watch it
(`loop.add_reader(irq.fileno(), ...)`, or `await irq.wait_async()`).

MSI needs bus mastering on in the PCI command register (an MSI is a memory write by the
device; without it the message is lost). INTx is level-triggered and automasked by
vfio-pci: after each interrupt the driver clears the cause in the device and calls
`unmask()`, else no further interrupt arrives. MSI and MSI-X need no unmask. The
functions taking an `Fd` are the raw calls (the conformance suite uses them on both
kernels).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import select
import struct
from dataclasses import dataclass

from fastmap import uapi
from fastmap._closing import Closing
from fastmap.kernel import Fd

#: The IRQ indexes of vfio-pci by name.
IRQ_INDEX = {
    "intx": uapi.VFIO_PCI_INTX_IRQ_INDEX,
    "msi": uapi.VFIO_PCI_MSI_IRQ_INDEX,
    "msix": uapi.VFIO_PCI_MSIX_IRQ_INDEX,
    "err": uapi.VFIO_PCI_ERR_IRQ_INDEX,
    "req": uapi.VFIO_PCI_REQ_IRQ_INDEX,
}


@dataclass(frozen=True)
class IrqInfo:
    """VFIO_DEVICE_GET_IRQ_INFO: how many vectors an IRQ index has and what it allows."""

    index: int
    flags: int
    count: int

    @property
    def eventfd(self) -> bool:
        return bool(self.flags & uapi.VFIO_IRQ_INFO_EVENTFD)

    @property
    def maskable(self) -> bool:
        return bool(self.flags & uapi.VFIO_IRQ_INFO_MASKABLE)

    @property
    def automasked(self) -> bool:
        return bool(self.flags & uapi.VFIO_IRQ_INFO_AUTOMASKED)

    @property
    def noresize(self) -> bool:
        return bool(self.flags & uapi.VFIO_IRQ_INFO_NORESIZE)


def irq_info(fd: Fd, index: int) -> IrqInfo:
    """VFIO_DEVICE_GET_IRQ_INFO for IRQ `index`."""
    info = uapi.new(uapi.vfio_irq_info, index=index)
    fd.ioctl(uapi.VFIO_DEVICE_GET_IRQ_INFO, info)
    return IrqInfo(index, int(info.flags), int(info.count))


def set_irqs(
    fd: Fd,
    index: int,
    flags: int,
    *,
    start: int = 0,
    count: int | None = None,
    eventfds: list[int] | None = None,
    bools: list[bool] | None = None,
) -> None:
    """VFIO_DEVICE_SET_IRQS. `flags` is an action (VFIO_IRQ_SET_ACTION_*); the data type is
    added from the data given: `eventfds` (-1 removes a vector's), `bools`, or none.
    `count` defaults to the number of data items (0 with no data: disable)."""
    if eventfds is not None and bools is not None:
        raise ValueError("give eventfds or bools, not both")
    if eventfds is not None:
        flags |= uapi.VFIO_IRQ_SET_DATA_EVENTFD
        data = struct.pack(f"<{len(eventfds)}i", *eventfds)
        n = len(eventfds)
    elif bools is not None:
        flags |= uapi.VFIO_IRQ_SET_DATA_BOOL
        data = bytes(1 if b else 0 for b in bools)
        n = len(bools)
    else:
        flags |= uapi.VFIO_IRQ_SET_DATA_NONE
        data = b""
        n = 0
    raw_set_irqs(fd, flags, index, start, n if count is None else count, data)


def raw_set_irqs(fd: Fd, flags: int, index: int, start: int, count: int, data: bytes) -> None:
    """VFIO_DEVICE_SET_IRQS exactly as given (argsz covers the header and `data`)."""
    hdr = uapi.new(uapi.vfio_irq_set, flags=flags, index=index, start=start, count=count)
    size = ctypes.sizeof(hdr)
    hdr.argsz = size + len(data)
    buf = bytearray(bytes(hdr) + data)
    fd.ioctl(uapi.VFIO_DEVICE_SET_IRQS, buf)


class DeviceIrq(Closing):
    """One interrupt vector delivered to an eventfd this object owns. `close()` disables
    the IRQ index (for vector 0, the whole index) and closes the eventfd."""

    def __init__(self, fd: Fd, index: int, vector: int = 0) -> None:
        self._fd = fd
        self.index = index
        self.vector = vector
        self.info = irq_info(fd, index)
        self._efd: int | None = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            set_irqs(
                fd, index, uapi.VFIO_IRQ_SET_ACTION_TRIGGER, start=vector, eventfds=[self._efd]
            )
        except BaseException:
            os.close(self._efd)
            self._efd = None
            raise

    def fileno(self) -> int:
        """The eventfd (readable while interrupts are pending)."""
        if self._efd is None:
            raise ValueError("the interrupt is closed")
        return self._efd

    def fileno_or_none(self) -> int | None:
        """The eventfd, or None once closed."""
        return self._efd

    def take(self) -> int:
        """The interrupts counted since the last take (0 if none), without blocking."""
        try:
            return int.from_bytes(os.read(self.fileno(), 8), "little")
        except BlockingIOError:
            return 0

    def wait(self, timeout: float | None = None) -> int:
        """Block until the device interrupts (or `timeout` seconds pass): the number of
        interrupts counted since the last wait, 0 on timeout."""
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000))
        if not poller.poll(ms):
            return 0
        return self.take()

    async def wait_async(self) -> int:
        """`wait()` for asyncio: resumes when the eventfd becomes readable."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fileno = self.fileno()

        def on_ready() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fileno, on_ready)
        try:
            while True:
                n = self.take()
                if n:
                    return n
                await ready
                ready = loop.create_future()
        finally:
            loop.remove_reader(fileno)

    def unmask(self) -> None:
        """INTx: unmask after handling (vfio-pci masked the line when it fired)."""
        set_irqs(self._fd, self.index, uapi.VFIO_IRQ_SET_ACTION_UNMASK, count=1)

    def trigger(self) -> None:
        """Loopback: have the kernel signal this vector's eventfd, as an interrupt would."""
        set_irqs(self._fd, self.index, uapi.VFIO_IRQ_SET_ACTION_TRIGGER, start=self.vector, count=1)

    def close(self) -> None:
        efd, self._efd = self._efd, None
        if efd is None:
            return
        try:
            if not self._fd.closed:
                if self.vector == 0:
                    set_irqs(self._fd, self.index, uapi.VFIO_IRQ_SET_ACTION_TRIGGER)
                else:
                    set_irqs(
                        self._fd,
                        self.index,
                        uapi.VFIO_IRQ_SET_ACTION_TRIGGER,
                        start=self.vector,
                        eventfds=[-1],
                    )
        finally:
            os.close(efd)

    def __repr__(self) -> str:
        return f"<DeviceIrq index {self.index} vector {self.vector} eventfd {self._efd}>"
