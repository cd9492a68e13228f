"""Typed iommufd object ids: a HWPT or device id that knows the iommufd it lives in.

An iommufd object id is only a number inside one fd. Like `Ioas` (which holds its `Fd`),
the ids fastmap hands out hold the `Fd` they came from: they are ints (usable wherever an id
goes into a struct, equal to the plain number), and every fastmap call that takes one checks
that it belongs to the fd the call goes to and that this fd is still open. A stale id, from
a backend that disconnected or from another iommufd, raises `StaleObjectError` instead of
naming whatever object now has that number.
"""

from __future__ import annotations

from typing import ClassVar, Self

from fastmap import _checks
from fastmap.errors import StaleObjectError
from fastmap.kernel import Fd


class ObjectId(int):
    """An iommufd object id bound to its `Fd`."""

    kind: ClassVar[str] = "object"
    _fd: Fd

    def __new__(cls, value: int, fd: Fd) -> Self:
        if not isinstance(fd, Fd):
            raise ValueError(f"fd: expected a fastmap Fd, got {fd!r}")
        obj = super().__new__(cls, _checks.integer(f"{cls.kind}_id", value, "u32"))
        obj._fd = fd
        return obj

    @property
    def fd(self) -> Fd:
        """The iommufd the object lives in."""
        return self._fd

    @property
    def stale(self) -> bool:
        """Its iommufd is closed: the number names nothing of ours any more."""
        return self._fd.closed

    def check(self, fd: Fd | int) -> int:
        """The plain id, for a call on `fd`; StaleObjectError if it does not live there."""
        if self._fd.closed:
            raise StaleObjectError(f"{self!r}: its iommufd is closed")
        same = self._fd is fd if isinstance(fd, Fd) else self._fd.number == fd
        if not same:
            raise StaleObjectError(f"{self!r} lives in {self._fd!r}, not in {fd!r}")
        return int(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({int(self)}, fd={self._fd.fd})"

    def __str__(self) -> str:
        return int.__repr__(self)  # the number, as in messages and logs

    def __reduce__(self) -> tuple[type[int], tuple[int]]:
        # Pickled or copied, it is a plain number: the Fd does not travel.
        return (int, (int(self),))


class HwptId(ObjectId):
    """A HWPT (hardware page table) id."""

    kind = "hwpt"


class DeviceId(ObjectId):
    """A bound device's id (VFIO_DEVICE_BIND_IOMMUFD's out_devid)."""

    kind = "dev"


def checked_id(value: int, fd: Fd | int) -> int:
    """An id argument for a call on `fd`: an `ObjectId` must live in `fd` (a plain number is
    passed on, to be range-checked with the struct field it goes into)."""
    if isinstance(value, ObjectId):
        return value.check(fd)
    return value
