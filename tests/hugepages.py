"""Huge pages reserved on the host for the suite, as the VM reserves them at boot.

The VM boots with hugepages=256 (tools/selftests/record-real.sh); programs and tests that
map MAP_HUGETLB memory on the host need the same. `reserve` raises the default size's
nr_hugepages so that COUNT pages are free, when it is writable (root, as in CI); when it
cannot, `HugePages.why` says why, for a skip. Test sessions on one machine share the pages:
each holds LOCK shared while it runs, and the last one to `release` writes back the value
found before the first raise (kept in LOCK), so one session cannot take another's pages.
Raising and releasing take RAISE_LOCK, briefly and exclusively; a session never waits for
another to end (taking LOCK exclusively to raise would wait for every running session).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastmap.ram import default_hugepage_size, free_hugepages

COUNT = 256  # as the VM's hugepages=256
LOCK = Path("/tmp/fastmap-hugepages.lock")
RAISE_LOCK = Path("/tmp/fastmap-hugepages-raise.lock")


@dataclass(frozen=True)
class HugePages:
    """The outcome of `reserve`: free pages of `size` now, and the reason if short."""

    size: int
    free: int
    why: str  # empty when `free >= COUNT`
    lock_fd: int | None  # LOCK, held shared until `release`

    @property
    def available(self) -> bool:
        return not self.why


def _nr_path(size: int) -> Path:
    return Path(f"/sys/kernel/mm/hugepages/hugepages-{size // 1024}kB/nr_hugepages")


def _raise(size: int, free: int, lock_fd: int) -> str:
    """Raise nr_hugepages by what is missing, recording the first original value in LOCK.
    Returns why COUNT pages are still not free, or ''."""
    path = _nr_path(size)
    try:
        old = int(path.read_text())
        path.write_text(str(old + COUNT - free))
    except (OSError, ValueError) as e:
        return (
            f"{COUNT} free {size >> 10} KiB huge pages needed, {free} free, and {path} "
            f"cannot be raised ({e}); run as root or set vm.nr_hugepages"
        )
    if not os.pread(lock_fd, 64, 0):
        os.pwrite(lock_fd, str(old).encode(), 0)
    now = free_hugepages(size)
    return (
        ""
        if now >= COUNT
        else (
            f"raised {path} but only {now} of {COUNT} huge pages "
            "could be allocated (memory short or fragmented)"
        )
    )


def reserve() -> HugePages:
    """Make COUNT default-size huge pages free if they are not already."""
    size = default_hugepage_size()
    free = free_hugepages(size)
    try:
        lock_fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        why = (
            ""
            if free >= COUNT
            else (
                f"{COUNT} free {size >> 10} KiB huge pages needed, "
                f"{free} free, and no reserving them here ({e}); "
                "run as root or set vm.nr_hugepages"
            )
        )
        return HugePages(size, free, why, None)
    with _raising():
        fcntl.flock(lock_fd, fcntl.LOCK_SH)
        free = free_hugepages(size)
        why = _raise(size, free, lock_fd) if free < COUNT else ""
    return HugePages(size, free_hugepages(size), why, lock_fd)


@contextmanager
def _raising() -> Iterator[None]:
    """RAISE_LOCK held exclusively: one session at a time raises or writes back."""
    fd = os.open(RAISE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def release(pages: HugePages) -> None:
    """Drop this session's hold; the last session out writes back the original value."""
    if pages.lock_fd is None:
        return
    with _raising():
        try:
            # Converting to exclusive succeeds only if no other session holds LOCK.
            fcntl.flock(pages.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(pages.lock_fd)  # another session still maps them
            return
        try:
            recorded = os.pread(pages.lock_fd, 64, 0)
            if recorded:
                _nr_path(pages.size).write_text(recorded.decode())
                os.ftruncate(pages.lock_fd, 0)
        except OSError:
            pass
        finally:
            os.close(pages.lock_fd)
