"""VFIO migration v2 of the simulated edu device, with the VT-d model's HWPT dirty tracking.

Simulator only: QEMU's emulated edu has no migration driver on a real kernel. The errnos and
arcs are those of vfio_ioctl_device_feature_mig_device_state / vfio_mig_get_next_state
(Linux 6.12): a device with VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY has STOP,
RUNNING, STOP_COPY, RESUMING and PRE_COPY; ERROR and the P2P states are not requestable
(EINVAL). Every arc is checked against a model built from the uapi's own description of the
FSM (include/uapi/linux/vfio.h), and the PRE_COPY session against VFIO_MIG_GET_PRECOPY_INFO's
contract there.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time
from collections import deque

import pytest
from tests.conformance.raw import (
    EDU_ALIVE,
    EDU_DMA_BUF,
    EDU_DMA_CMD,
    EDU_DMA_CNT,
    EDU_DMA_DST,
    EDU_DMA_SRC,
    EDU_FACT,
    EDU_IRQ_RAISE,
    EDU_IRQ_STATUS,
    EDU_STATUS,
    PAGE,
    Buf,
    Dev,
    Iommufd,
    K,
    attach,
    bind,
    ioctl,
)
from tests.conformance.raw import sim_kernel as kernel

GET, SET, PROBE = (
    K["VFIO_DEVICE_FEATURE_GET"],
    K["VFIO_DEVICE_FEATURE_SET"],
    K["VFIO_DEVICE_FEATURE_PROBE"],
)
MIGRATION = K["VFIO_DEVICE_FEATURE_MIGRATION"]
MIG_STATE = K["VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE"]
DATA_SIZE = K["VFIO_DEVICE_FEATURE_MIG_DATA_SIZE"]
ERROR, STOP, RUNNING = (
    K["VFIO_DEVICE_STATE_ERROR"],
    K["VFIO_DEVICE_STATE_STOP"],
    K["VFIO_DEVICE_STATE_RUNNING"],
)
STOP_COPY, RESUMING = K["VFIO_DEVICE_STATE_STOP_COPY"], K["VFIO_DEVICE_STATE_RESUMING"]
RUNNING_P2P, PRE_COPY = K["VFIO_DEVICE_STATE_RUNNING_P2P"], K["VFIO_DEVICE_STATE_PRE_COPY"]
PRE_COPY_P2P = K["VFIO_DEVICE_STATE_PRE_COPY_P2P"]
DIRTY = K["IOMMU_HWPT_ALLOC_DIRTY_TRACKING"]
# The edu record: 8 u32 (header, identification, registers), 5 u64 (DMA registers and mask)
# and the 4 KiB buffer.
RECORD = 8 * 4 + 5 * 8 + 4096
IOVA = 1 << 24  # the edu DMA engine drives 28 address bits
NPAGES = 16


class Feature(ctypes.Structure):
    _fields_ = [("argsz", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("u64", ctypes.c_uint64)]


class StateFeature(ctypes.Structure):
    _fields_ = [
        ("argsz", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("device_state", ctypes.c_uint32),
        ("data_fd", ctypes.c_int32),
    ]


class Side:
    """One simulated machine: an edu bound to an iommufd, attached to a dirty-tracking HWPT
    over an IOAS that maps `NPAGES` pages of guest memory at IOVA."""

    def __init__(self) -> None:
        self.k = kernel()
        info = self.k.machine.add_pci_device(dirty=True)
        self.f = Iommufd(self.k)
        self.ioas = self.f.ioas()
        self.dev = Dev(self.k, self.k.open(info["cdev"], os.O_RDWR))
        rc, devid = bind(self.dev, self.f.fd)
        assert rc == 0
        self.dev.enable()
        rc, self.hwpt = self.f.hwpt_alloc(devid, self.ioas, DIRTY)
        assert rc == 0
        assert attach(self.dev, self.hwpt) == (0, self.hwpt)
        self.ram = Buf(NPAGES * PAGE)
        assert self.f.map(self.ioas, self.ram.addr, NPAGES * PAGE, iova=IOVA)[0] == 0

    def feature(self, flags: int, value: int = 0, argsz: int | None = None) -> tuple[int, int]:
        s = Feature(
            argsz=ctypes.sizeof(Feature) if argsz is None else argsz, flags=flags, u64=value
        )
        return self.dev.ioctl("VFIO_DEVICE_FEATURE", s), int(s.u64)

    def set_state(self, state: int) -> tuple[int, int]:
        s = StateFeature(
            argsz=ctypes.sizeof(StateFeature), flags=SET | MIG_STATE, device_state=state, data_fd=-7
        )
        return self.dev.ioctl("VFIO_DEVICE_FEATURE", s), int(s.data_fd)

    def state(self) -> int:
        s = StateFeature(argsz=ctypes.sizeof(StateFeature), flags=GET | MIG_STATE)
        assert self.dev.ioctl("VFIO_DEVICE_FEATURE", s) == 0
        return int(s.device_state)

    def dirty_pages(self) -> list[int]:
        bitmap = (ctypes.c_uint64 * 1)()
        assert self.f.get_dirty(self.hwpt, IOVA, NPAGES * PAGE, PAGE, ctypes.addressof(bitmap)) == 0
        return [i for i in range(NPAGES) if bitmap[0] >> i & 1]

    def registers(self) -> tuple[int, ...]:
        d = self.dev
        return (
            d.r32(EDU_ALIVE),
            d.r32(EDU_FACT),
            d.r32(EDU_STATUS),
            d.r32(EDU_IRQ_STATUS),
            d.r64(EDU_DMA_SRC),
            d.r64(EDU_DMA_DST),
            d.r64(EDU_DMA_CNT),
            d.r64(EDU_DMA_CMD),
        )


def read_all(k: object, fd: int) -> bytes:
    out = b""
    while True:
        chunk = k.read(fd, 1000)  # type: ignore[attr-defined]
        assert isinstance(chunk, bytes), chunk
        if not chunk:
            return out
        out += chunk


@pytest.fixture()
def src() -> Side:
    return Side()


def test_migration_features(src: Side) -> None:
    assert src.feature(GET | MIGRATION) == (
        0,
        K["VFIO_MIGRATION_STOP_COPY"] | K["VFIO_MIGRATION_PRE_COPY"],
    )
    assert src.feature(PROBE | GET | MIGRATION)[0] == 0
    assert src.feature(PROBE | SET | MIGRATION)[0] == -errno.EINVAL  # GET only
    assert src.feature(SET | MIGRATION)[0] == -errno.EINVAL
    assert src.feature(MIGRATION)[0] == -errno.EINVAL  # neither GET nor SET
    assert src.feature(GET | MIGRATION, argsz=12)[0] == -errno.EINVAL  # payload too short
    assert src.feature(GET | DATA_SIZE) == (0, RECORD)
    assert src.feature(SET | DATA_SIZE)[0] == -errno.EINVAL
    assert src.feature(PROBE | SET | GET | MIG_STATE)[0] == 0
    assert src.state() == RUNNING
    for dma_logging in (6, 7, 8):  # no device DMA logging ops
        assert src.feature(PROBE | SET | dma_logging)[0] == -errno.ENOTTY


def test_full_migration_between_machines(src: Side) -> None:
    d = src.dev
    assert src.f.set_dirty(src.hwpt, True) == 0
    # Device state worth carrying: registers and a buffer filled from guest memory.
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(4096))
    src.ram.write(pattern, 2 * PAGE)
    d.w32(EDU_ALIVE, 0x12345678)
    d.w32(EDU_FACT, 10)
    d.w32(EDU_IRQ_RAISE, 0x40)
    d.dma(IOVA + 2 * PAGE, EDU_DMA_BUF, 4096, to_ram=False)
    assert src.dirty_pages() == []  # device reads do not dirty
    d.dma(EDU_DMA_BUF + 100, IOVA + 5 * PAGE + 100, 300, to_ram=True)  # before STOP
    assert src.dirty_pages() == [5]
    saved_regs = src.registers()
    assert saved_regs[:4] == (~0x12345678 & 0xFFFFFFFF, 3628800, 0, 0x40)

    assert src.set_state(STOP) == (0, -1)
    assert src.state() == STOP
    # A stopped device neither changes state nor DMAs.
    d.w32(EDU_ALIVE, 1)
    d.dma(EDU_DMA_BUF, IOVA + 7 * PAGE, 64, to_ram=True)
    assert src.registers() == saved_regs
    assert src.dirty_pages() == []
    assert src.ram.read(64, 7 * PAGE) == bytes(64)

    assert src.feature(GET | DATA_SIZE) == (0, RECORD)
    rc, save_fd = src.set_state(STOP_COPY)
    assert rc == 0 and save_fd >= 0
    assert src.k.pread(save_fd, 8, 0) == -errno.ESPIPE  # a stream
    assert src.k.write(save_fd, b"x") == -errno.EINVAL  # read-only
    data = read_all(src.k, save_fd)
    assert len(data) == RECORD
    assert src.set_state(STOP) == (0, -1)
    assert src.k.read(save_fd, 8) == -errno.ENODEV  # the session ended
    assert src.k.close(save_fd) == 0

    # Destination: guest memory as pre-copy sent it, then the device state.
    dst = Side()
    dst.ram.write(src.ram.read())
    assert dst.set_state(STOP) == (0, -1)
    rc, resume_fd = dst.set_state(RESUMING)
    assert rc == 0 and resume_fd >= 0
    assert dst.k.read(resume_fd, 8) == -errno.EINVAL  # write-only
    for off in range(0, len(data), 1000):
        assert dst.k.write(resume_fd, data[off : off + 1000]) == len(data[off : off + 1000])
    assert dst.set_state(RUNNING) == (0, -1)  # RESUMING -> STOP -> RUNNING
    assert dst.k.write(resume_fd, b"x") == -errno.ENODEV
    assert dst.k.close(resume_fd) == 0
    assert dst.registers() == saved_regs
    assert dst.dev.r32(0) == 0x010000ED
    # The restored device works: its buffer, restored, goes to the destination's memory.
    assert dst.f.set_dirty(dst.hwpt, True) == 0
    dst.dev.dma(EDU_DMA_BUF, IOVA + 9 * PAGE, 4096, to_ram=True)
    assert dst.ram.read(4096, 9 * PAGE) == pattern
    assert dst.ram.read(300, 5 * PAGE + 100) == pattern[100:400]
    assert dst.dirty_pages() == [9]
    dst.dev.w32(EDU_FACT, 5)
    assert dst.dev.r32(EDU_FACT) == 120
    # The source goes back to running.
    assert src.set_state(RUNNING) == (0, -1)
    d.w32(EDU_ALIVE, 1)
    assert d.r32(EDU_ALIVE) == 0xFFFFFFFE


def test_direct_arcs_and_errnos(src: Side) -> None:
    # RUNNING -> STOP_COPY in one call goes through STOP and hands out the saving fd.
    rc, fd = src.set_state(STOP_COPY)
    assert rc == 0 and fd >= 0
    assert len(read_all(src.k, fd)) == RECORD
    # STOP_COPY -> RESUMING goes through STOP: the saving session ends, a resuming one starts.
    rc, rfd = src.set_state(RESUMING)
    assert rc == 0 and rfd >= 0
    assert src.k.read(fd, 1) == -errno.ENODEV
    # Not requestable: ERROR, states needing P2P, numbers past the enum.
    for bad in (ERROR, RUNNING_P2P, PRE_COPY_P2P, 8, 1000):
        assert src.set_state(bad) == (-errno.EINVAL, -1)
    assert src.state() == RESUMING
    # A record that is not an edu's: the arc out of RESUMING fails, the device stays there.
    assert src.k.write(rfd, b"\0" * 100) == 100
    assert src.set_state(STOP) == (-errno.EINVAL, -1)
    assert src.state() == RESUMING
    # The record complete, what follows must be a patch: zeros are no patch header.
    assert src.k.write(rfd, b"\0" * RECORD) == -errno.EINVAL
    assert src.k.write(rfd, b"x") == -errno.EINVAL  # the stream stays broken
    assert src.set_state(RUNNING) == (-errno.EINVAL, -1)
    # edu has no reset method, so vfio-pci refuses VFIO_DEVICE_RESET (EINVAL, as Linux 6.12
    # does for QEMU's edu) and the device stays where it is; the last close resets it.
    assert src.dev.ioctl("VFIO_DEVICE_RESET", None) == -errno.EINVAL
    assert src.state() == RESUMING
    for f in (fd, rfd):
        assert src.k.close(f) == 0


def test_truncated_and_corrupt_records(src: Side) -> None:
    rc, fd = src.set_state(STOP_COPY)
    assert rc == 0
    data = read_all(src.k, fd)
    assert src.set_state(STOP) == (0, -1)
    assert src.k.close(fd) == 0
    for bad in (data[:-1], data[:4] + b"\xff" + data[5:], data[:12] + b"\0" * 4 + data[16:]):
        dst = Side()  # a fresh device each time: a failed resume leaves it in RESUMING
        before = dst.registers()
        rc, rfd = dst.set_state(RESUMING)
        assert rc == 0
        assert dst.k.write(rfd, bad) == len(bad)
        assert dst.set_state(STOP) == (-errno.EINVAL, -1)
        assert dst.registers() == before  # nothing loaded
        assert dst.state() == RESUMING
        assert dst.k.close(rfd) == 0
    # A record claiming a DMA in flight is no state a stopped edu can be in.
    dst = Side()
    running = bytearray(data)
    off = 8 * 4 + 3 * 8  # the DMA command register
    struct.pack_into("<Q", running, off, 1)
    rc, rfd = dst.set_state(RESUMING)
    assert rc == 0
    assert dst.k.write(rfd, bytes(running)) == RECORD
    assert dst.set_state(STOP) == (-errno.EINVAL, -1)
    assert dst.set_state(RESUMING) == (0, -1)  # already there: no new session
    assert dst.k.close(rfd) == 0


def test_close_resets_to_running(src: Side) -> None:
    assert src.set_state(STOP) == (0, -1)
    assert src.dev.close() == 0
    info = src.k.machine.devices()[0]
    dev = Dev(src.k, src.k.open(info["cdev"], os.O_RDWR))
    f = Iommufd(src.k)
    assert bind(dev, f.fd)[0] == 0
    s = StateFeature(argsz=ctypes.sizeof(StateFeature), flags=GET | MIG_STATE)
    assert dev.ioctl("VFIO_DEVICE_FEATURE", s) == 0
    assert s.device_state == RUNNING


def wait_for(writer: object, count: int) -> None:
    """Until the background writer has tried `count` transfers (written or refused)."""
    while True:
        stats = writer.stats  # type: ignore[attr-defined]
        if stats["pages"] + stats["faults"] >= count:
            return
        time.sleep(0.001)


def test_stopped_device_does_not_dma_in_the_background(src: Side) -> None:
    assert src.f.set_dirty(src.hwpt, True) == 0
    bdf = src.k.machine.devices()[0]["bdf"]
    writer = src.k.machine.dma_writer(bdf, [(IOVA, NPAGES * PAGE)])
    assert src.set_state(STOP) == (0, -1)
    writer.start(20000.0)
    wait_for(writer, 50)
    stats = writer.stop()
    assert stats["pages"] == 0
    assert src.dirty_pages() == []
    assert src.ram.read() == bytes(NPAGES * PAGE)
    assert src.set_state(RUNNING) == (0, -1)
    tried = stats["pages"] + stats["faults"]  # the stats count across runs
    writer.start(20000.0)
    wait_for(writer, tried + 50)
    writer.stop()
    assert src.dirty_pages() != []
    assert src.ram.read() != bytes(NPAGES * PAGE)


# -- the FSM, as include/uapi/linux/vfio.h describes it ------------------------------------
# Its base arcs (the "STATE -> STATE" paragraphs; STOP_COPY -> PRE_COPY(_P2P) is listed only
# to be refused). Without P2P the *_P2P states "behave as though the device was fully
# running", so their arcs are skipped over, not removed.
BASE_ARCS = [
    (RUNNING_P2P, STOP), (STOP_COPY, STOP), (RESUMING, STOP),
    (PRE_COPY, RUNNING), (RUNNING_P2P, RUNNING),
    (PRE_COPY_P2P, RUNNING_P2P), (RUNNING, RUNNING_P2P), (STOP, RUNNING_P2P),
    (RUNNING, PRE_COPY), (RUNNING_P2P, PRE_COPY_P2P), (STOP, STOP_COPY),
    (PRE_COPY, PRE_COPY_P2P), (PRE_COPY_P2P, PRE_COPY), (PRE_COPY_P2P, STOP_COPY),
    (STOP, RESUMING),
]  # fmt: skip
# The arcs that "return a new data_fd"; moving inside the saving group keeps the session.
NEW_FD_ARCS = {
    (RUNNING, PRE_COPY),
    (RUNNING_P2P, PRE_COPY_P2P),
    (STOP, STOP_COPY),
    (STOP, RESUMING),
}
SAVING_GROUP = {PRE_COPY, PRE_COPY_P2P, STOP_COPY}
# The edu offers STOP_COPY and PRE_COPY, no P2P.
EDU_STATES = {STOP, RUNNING, STOP_COPY, RESUMING, PRE_COPY}


def model_paths(cur: int, target: int) -> list[list[int]]:
    """Every shortest path of base arcs from cur to target whose interior states are not in
    the saving group (the uapi's rules for combination arcs), unless the whole path stays in
    the group (the session goes on: PRE_COPY -> PRE_COPY_P2P -> STOP_COPY); STOP_COPY never
    leads back into PRE_COPY."""
    if cur == STOP_COPY and target in (PRE_COPY, PRE_COPY_P2P):
        return []
    best: list[list[int]] = []
    queue = deque([[cur]])
    while queue:
        path = queue.popleft()
        if best and len(path) > len(best[0]):
            break
        if path[-1] == target:
            best.append(path)
            continue
        within = cur in SAVING_GROUP and target in SAVING_GROUP
        if len(path) > 1 and path[-1] in SAVING_GROUP and not within:
            continue  # a saving state can only end a path
        for a, b in BASE_ARCS:
            if a == path[-1] and b not in path:
                queue.append([*path, b])
    return best


def model_arc(cur: int, target: int) -> tuple[int, bool]:
    """(-errno or 0, whether a data fd comes back) for SET_STATE target from cur on the edu."""
    if target not in EDU_STATES:
        return -errno.EINVAL, False
    if cur == target:
        return 0, False
    paths = model_paths(cur, target)
    if not paths:
        return -errno.EINVAL, False
    # The states the device passes through (the P2P ones skipped) must not depend on which
    # shortest path is taken.
    seen = {tuple(s for s in p if s in EDU_STATES) for p in paths}
    assert len(seen) == 1, (cur, target, paths)
    return 0, (paths[0][-2], paths[0][-1]) in NEW_FD_ARCS


def test_every_arc_against_the_uapi_model() -> None:
    first = Side()
    rc, fd = first.set_state(STOP_COPY)
    assert rc == 0
    record = read_all(first.k, fd)  # a valid stream, so that RESUMING can be left
    for cur in sorted(EDU_STATES):
        for target in (
            ERROR,
            STOP,
            RUNNING,
            STOP_COPY,
            RESUMING,
            RUNNING_P2P,
            PRE_COPY,
            PRE_COPY_P2P,
            8,
            1000,
        ):
            side = Side()
            if cur != RUNNING:
                rc, fd = side.set_state(cur)
                assert rc == 0
                if cur == RESUMING:
                    assert side.k.write(fd, record) == RECORD
            assert side.state() == cur
            want_rc, want_fd = model_arc(cur, target)
            rc, fd = side.set_state(target)
            assert (rc, fd >= 0) == (want_rc, want_fd), (cur, target)
            assert side.state() == (target if rc == 0 else cur), (cur, target)
            assert fd >= 0 or fd == -1


class PrecopyInfo(ctypes.Structure):
    _fields_ = [
        ("argsz", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("initial_bytes", ctypes.c_uint64),
        ("dirty_bytes", ctypes.c_uint64),
    ]


class PrecopyInfoLonger(ctypes.Structure):
    _fields_ = [*PrecopyInfo._fields_, ("more", ctypes.c_uint64 * 5)]


def precopy_info(side: Side, fd: int, argsz: int = 24, flags: int = 0) -> tuple[int, int, int]:
    kind = PrecopyInfoLonger if argsz > 24 else PrecopyInfo
    s = kind(argsz=argsz, flags=flags, initial_bytes=77, dirty_bytes=77)
    rc = ioctl(side.k, fd, "VFIO_MIG_GET_PRECOPY_INFO", s)
    if rc == 0:
        assert (s.argsz, s.flags) == (argsz, flags)  # given back as they came
    return rc, int(s.initial_bytes), int(s.dirty_bytes)


def drain(side: Side, fd: int, size: int = 1000) -> bytes:
    """Read until pre-copy's temporary end of stream (ENOMSG)."""
    out = b""
    while True:
        chunk = side.k.read(fd, size)
        if chunk == -errno.ENOMSG:
            return out
        assert isinstance(chunk, bytes) and chunk, chunk
        out += chunk


def test_pre_copy_session(src: Side) -> None:
    d = src.dev
    pattern = bytes((i * 5 + 1) & 0xFF for i in range(4096))
    src.ram.write(pattern, 0)
    d.w32(EDU_ALIVE, 0x1111)
    d.dma(IOVA, EDU_DMA_BUF, 4096, to_ram=False)
    rc, fd = src.set_state(PRE_COPY)
    assert rc == 0 and fd >= 0
    assert src.state() == PRE_COPY
    # The initial data is the whole record; nothing is dirty yet.
    assert precopy_info(src, fd) == (0, RECORD, 0)
    assert precopy_info(src, fd, argsz=23)[0] == -errno.EINVAL
    assert precopy_info(src, fd, argsz=64, flags=0x5A) == (0, RECORD, 0)
    assert ioctl(src.k, fd, "VFIO_DEVICE_FEATURE", PrecopyInfo()) == -errno.ENOTTY
    stream = src.k.read(fd, 1000)
    assert isinstance(stream, bytes) and len(stream) == 1000
    assert precopy_info(src, fd) == (0, RECORD - 1000, 0)
    stream += drain(src, fd)
    assert len(stream) == RECORD
    assert precopy_info(src, fd) == (0, 0, 0)  # the temporary end of stream
    # The device runs on: what it changes is dirty, and reading it sends exactly that much.
    d.w32(EDU_ALIVE, 0x2222)
    src.ram.write(b"\xab" * 100, 0)
    d.dma(IOVA, EDU_DMA_BUF + 200, 100, to_ram=False)
    rc, initial, dirty = precopy_info(src, fd)
    assert rc == 0 and initial == 0 and 0 < dirty < RECORD
    patch = drain(src, fd, size=7)
    assert len(patch) == dirty
    assert precopy_info(src, fd) == (0, 0, 0)
    # More changes, then STOP_COPY: the same fd carries the rest, no new fd comes back.
    d.w32(EDU_FACT, 6)
    d.dma(IOVA + 2 * PAGE, EDU_DMA_BUF + 4000, 96, to_ram=False)  # zeros
    assert src.set_state(STOP_COPY) == (0, -1)
    assert precopy_info(src, fd)[0] == -errno.EINVAL  # not a PRE_COPY state
    d.w32(EDU_ALIVE, 0x3333)  # stopped: dropped
    saved_regs = src.registers()
    rest = read_all(src.k, fd)
    assert rest and src.k.read(fd, 10) == b""  # the end of stream is permanent now
    stream += patch + rest
    assert src.set_state(STOP) == (0, -1)
    assert src.k.read(fd, 10) == -errno.ENODEV
    assert precopy_info(src, fd)[0] == -errno.EINVAL
    assert src.k.close(fd) == 0

    dst = Side()
    rc, rfd = dst.set_state(RESUMING)
    assert rc == 0
    assert precopy_info(dst, rfd)[0] == -errno.ENOTTY  # a resuming fd has no ioctl
    for off in range(0, len(stream), 5):  # patch headers split across writes
        assert dst.k.write(rfd, stream[off : off + 5]) == len(stream[off : off + 5])
    assert dst.set_state(RUNNING) == (0, -1)
    assert dst.k.close(rfd) == 0
    assert dst.registers() == saved_regs
    assert dst.registers()[0] == ~0x2222 & 0xFFFFFFFF
    dst.dev.dma(EDU_DMA_BUF, IOVA + 4 * PAGE, 4096, to_ram=True)
    want = bytearray(pattern)
    want[200:300] = b"\xab" * 100
    want[4000:4096] = bytes(96)
    assert dst.ram.read(4096, 4 * PAGE) == bytes(want)


def test_pre_copy_to_running_ends_the_session(src: Side) -> None:
    rc, fd = src.set_state(PRE_COPY)
    assert rc == 0
    assert src.set_state(RUNNING) == (0, -1)
    assert src.k.read(fd, 10) == -errno.ENODEV
    assert precopy_info(src, fd)[0] == -errno.EINVAL  # RUNNING
    rc, fd2 = src.set_state(PRE_COPY)  # a new session, a new fd
    assert rc == 0 and fd2 >= 0
    assert precopy_info(src, fd)[0] == -errno.ENODEV  # the old session's fd
    assert precopy_info(src, fd2) == (0, RECORD, 0)
    # PRE_COPY -> STOP goes through RUNNING: the session ends.
    assert src.set_state(STOP) == (0, -1)
    assert src.k.read(fd2, 10) == -errno.ENODEV
    for f in (fd, fd2):
        assert src.k.close(f) == 0


def test_stream_format_and_broken_patches(src: Side) -> None:
    """The documented stream: the record, then patches (magic, offset, length, bytes)."""
    rc, fd = src.set_state(STOP_COPY)
    assert rc == 0
    record = read_all(src.k, fd)
    assert src.k.close(fd) == 0
    magic = struct.unpack("<I", b"MIGP")[0]
    alive_off = 4 * 4  # after magic, version, length and identification
    patch = struct.pack("<III", magic, alive_off, 4) + struct.pack("<I", 0x55AA)
    bad_off = struct.pack("<III", magic, RECORD - 2, 4) + b"\0" * 4
    bad_magic = struct.pack("<III", magic ^ 1, alive_off, 4) + b"\0" * 4
    empty = struct.pack("<III", magic, alive_off, 0)
    for tail, ok in (
        (patch, True),
        (patch[:-1], False),
        (bad_off, False),
        (bad_magic, False),
        (empty, False),
    ):
        dst = Side()
        rc, rfd = dst.set_state(RESUMING)
        assert rc == 0
        wrote = dst.k.write(rfd, record + tail)
        assert wrote == (RECORD + len(tail) if ok or tail == patch[:-1] else -errno.EINVAL)
        assert dst.set_state(RUNNING)[0] == (0 if ok else -errno.EINVAL)
        if ok:
            assert dst.dev.r32(EDU_ALIVE) == 0x55AA  # the register as it reads
        assert dst.k.close(rfd) == 0
