"""fork() and the iommufd objects: the fork contract of docs/architecture.md.

iommufd objects belong to the open file, and a child shares its parent's open files: after
fork() the child sees the IOAS the parent made, with its mappings, through the inherited
fd. On the simulator, fork() while another thread is inside a simulated ioctl must not
leave a simulator lock held in the child (sim/core/fork_gate.h).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from fastmap.errors import KernelError
from fastmap.kernel import Fd, Kernel

from .helpers import ioas_alloc, ioas_map, ioas_unmap, iova_ranges

PAGE = mmap.PAGESIZE
CHURN_PAGES = 256
IOVA = 0x100000


def run_in_child(body: Callable[[], None]) -> int:
    """Fork, run `body` in the child, and return the child's exit status (0: it returned).

    A child still running after a minute is taken as deadlocked: it is killed and the status
    is SIGKILL's.
    """
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60  # a hang guard, not a timing assertion
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.005)


def test_child_sees_the_parents_ioas(kernel: Kernel, iommufd: Fd) -> None:
    ioas = ioas_alloc(iommufd)
    buf = mmap.mmap(-1, PAGE)
    va = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    ioas_map(iommufd, ioas, va, PAGE, iova=IOVA)

    def child() -> None:
        # Same object id, same mapping, through the inherited fd.
        assert ioas_unmap(iommufd, ioas, IOVA, PAGE) == PAGE
        ranges, _ = iova_ranges(iommufd, ioas)
        assert ranges

    assert run_in_child(child) == 0
    if kernel.name == "real":
        # Linux: the child's unmap acted on the one IOAS both processes share.
        assert ioas_unmap_or_errno(iommufd, ioas) == "ENOENT"
    else:
        # The simulator's kernel state is process memory: the child changed its own copy.
        assert ioas_unmap(iommufd, ioas, IOVA, PAGE) == PAGE


def ioas_unmap_or_errno(fd: Fd, ioas: int) -> str:
    try:
        ioas_unmap(fd, ioas, IOVA, PAGE)
    except KernelError as e:
        return e.errno_name
    return "unmapped"


@pytest.mark.parametrize("forks", [40])
def test_fork_while_another_thread_is_in_an_ioctl(kernel: Kernel, iommufd: Fd, forks: int) -> None:
    ioas = ioas_alloc(iommufd)
    buf = mmap.mmap(-1, CHURN_PAGES * PAGE)
    va = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                ioas_map(iommufd, ioas, va, CHURN_PAGES * PAGE, iova=IOVA)
                ioas_unmap(iommufd, ioas, IOVA, CHURN_PAGES * PAGE)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    def child() -> None:
        # The first call in the child takes the locks the other thread may have held.
        ioas_alloc(iommufd)
        ioas_map(iommufd, ioas_alloc(iommufd), va, PAGE, iova=IOVA)

    thread = threading.Thread(target=churn)
    thread.start()
    statuses: list[int] = []
    try:
        while len(statuses) < forks and not any(statuses):  # stop at the first hung child
            statuses.append(run_in_child(child))
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert statuses == [0] * forks
