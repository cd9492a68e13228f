"""Live migration of a QEMU guest using the passed-through simulated edu device, between two
QEMUs on this host, each under its own `fastmap sim-run` (so each has its own simulated
kernel and device): the source runs guest_dma.c's migration loop (the device keeps writing
guest pages by DMA), QEMU migrates it over a unix socket (QMP `migrate`), and the destination
guest checks every page the device wrote and that the device still works.

The figures come from the source's `query-migrate` (rounds = dirty syncs, pages sent,
downtime) and from the source's sim-run trace (the IOMMU dirty bitmaps QEMU read).
"""

from __future__ import annotations

import json
import re
import socket
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIG_VERIFIED = "guest migration verified"
LOOP_STARTED = "guest: migration loop"
DMA_VERIFIED = "guest DMA verified"
# QEMU's trace events for VFIO migration and IOMMUFD dirty tracking.
QEMU_MIG_EVENTS = (
    "vfio_migration_*",
    "vfio_save_*",
    "vfio_load_*",
    "vfio_state_pending_*",
    "vfio_device_dirty_tracking_*",
    "vfio_iommu_map_dirty_notify",
    "vfio_get_dirty_bitmap",
    "iommufd_*",
)


class Qmp:
    """A QMP client on a unix socket: one command at a time, events skipped."""

    def __init__(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.settimeout(timeout)
        self.buf = b""
        self._reply()  # greeting
        self.cmd("qmp_capabilities")

    def _reply(self) -> dict[str, Any]:
        while True:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("QMP socket closed")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            msg: dict[str, Any] = json.loads(line)
            if "event" not in msg:
                return msg

    def cmd(self, name: str, **args: Any) -> Any:
        req: dict[str, Any] = {"execute": name}
        if args:
            req["arguments"] = args
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        reply = self._reply()
        if "error" in reply:
            raise RuntimeError(f"QMP {name}: {reply['error']}")
        return reply.get("return")

    def close(self) -> None:
        self.sock.close()


@dataclass
class MigResult:
    ok: bool
    seconds: float
    info: dict[str, Any]
    verified: str
    dma_verified: str
    src_console: str
    dst_console: str
    src_log: list[str]
    dst_log: list[str]
    notes: list[str] = field(default_factory=list)


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        hit = next((ln for ln in lines if ln.startswith(text)), "")
        if hit:
            return hit
        if proc.poll() is not None:
            return ""
        time.sleep(0.2)
    return ""


def _copy(proc: subprocess.Popen[bytes], path: Path) -> None:
    assert proc.stderr is not None
    with open(path, "wb") as f:
        shutil.copyfileobj(proc.stderr, f)


def run(sim_argv: list[str], qemu_argv: list[str], out: Path, timeout: float,
        downtime_ms: int, bandwidth: int) -> MigResult:
    """sim_argv: `fastmap sim-run --device ...` up to `--`; qemu_argv: the guest's QEMU
    command line, without -incoming/-qmp, and its -append text last-but-one."""
    sock = out / "mig.sock"
    for p in (sock, out / "src.qmp", out / "dst.qmp"):
        p.unlink(missing_ok=True)
    trace: list[str] = []
    for event in QEMU_MIG_EVENTS:
        trace += ["-trace", event]

    drains: list[threading.Thread] = []

    def start(side: str, extra: list[str]) -> subprocess.Popen[bytes]:
        # The sim-run trace and QEMU's trace events share stderr, a pipe, so they stay in
        # the order they happened (a regular file reopened as /dev/stderr would not).
        argv = [*sim_argv, "--trace", "/dev/stderr", "--", *qemu_argv, *trace,
                "-qmp", f"unix:{out / side}.qmp,server=on,wait=off", *extra]
        with open(out / f"mig-{side}.console", "wb") as console:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=console,
                                    stderr=subprocess.PIPE)
        drain = threading.Thread(target=_copy, args=(proc, out / f"mig-{side}.log"))
        drain.start()
        drains.append(drain)
        return proc

    t0 = time.monotonic()
    dst = start("dst", ["-incoming", f"unix:{sock}"])
    src = start("src", [])
    info: dict[str, Any] = {}
    verified = dma_verified = ""
    notes: list[str] = []
    try:
        if not _wait_for(out / "mig-src.console", LOOP_STARTED, src, timeout):
            notes.append("the source guest's migration loop did not start")
            raise TimeoutError
        time.sleep(1.0)  # the device has been writing pages for a while
        qs, qd = Qmp(out / "src.qmp", timeout), Qmp(out / "dst.qmp", timeout)
        qs.cmd("migrate-set-parameters", **{"downtime-limit": downtime_ms,
                                            "max-bandwidth": bandwidth})
        qs.cmd("migrate", uri=f"unix:{sock}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = qs.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.2)
        if info.get("status") != "completed":
            notes.append(f"migration ended as {info.get('status')}: {info.get('error-desc', '')}")
            raise TimeoutError
        dst_status = qd.cmd("query-status")
        notes.append(f"destination after migration: {dst_status.get('status')}")
        time.sleep(1.0)  # the destination guest checks the pages as it rewrites them
        assert dst.stdin is not None
        dst.stdin.write(b"c\n")
        dst.stdin.flush()
        verified = _wait_for(out / "mig-dst.console", MIG_VERIFIED, dst, timeout)
        dma_verified = _wait_for(out / "mig-dst.console", DMA_VERIFIED, dst, timeout)
        qs.cmd("quit")
        qs.close()
        qd.close()
    except (TimeoutError, OSError, RuntimeError, ConnectionError) as e:
        notes.append(f"{type(e).__name__}: {e}")
    finally:
        for proc in (src, dst):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for drain in drains:
            drain.join()
    seconds = time.monotonic() - t0
    src_log = (out / "mig-src.log").read_text(errors="replace").splitlines()
    dst_log = (out / "mig-dst.log").read_text(errors="replace").splitlines()
    return MigResult(bool(verified and dma_verified), seconds, info, verified, dma_verified,
                     (out / "mig-src.console").read_text(errors="replace"),
                     (out / "mig-dst.console").read_text(errors="replace"),
                     src_log, dst_log, notes)


def dirty_reported(log: list[str]) -> tuple[int, int]:
    """(GET_DIRTY_BITMAP calls, dirty pages they reported) from a sim-run trace."""
    calls = pages = 0
    for ln in log:
        if "IOMMU_HWPT_GET_DIRTY_BITMAP" in ln:
            calls += 1
            m = re.search(r"-> dirty=(\d+)", ln)
            pages += int(m.group(1)) if m else 0
    return calls, pages
