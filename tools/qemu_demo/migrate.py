"""Live migration of a QEMU guest using the passed-through simulated edu device, between two
QEMUs on this host, each under its own `fastmap sim-run` (so each has its own simulated
kernel and device): the source runs guest_dma.c's migration loop (the device keeps writing
guest pages by DMA), QEMU migrates it over a unix socket (QMP `migrate`), and the destination
guest checks every page the device wrote and that the device still works.

The figures come from the source's `query-migrate` (rounds = dirty syncs, pages sent,
downtime), from the source's sim-run trace (the IOMMU dirty bitmaps QEMU read) and from
QEMU's own trace events (the device state it read in pre-copy and in stop-copy: the edu
offers VFIO_MIGRATION_PRE_COPY, so QEMU streams its state while the guest still runs).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import socket
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
    rounds: dict[int, int]  # dirty-sync-count -> normal pages sent by then (sampled)
    count_at: list[int]  # the guest's device page writes at `migrate` and at completion
    frames: int  # 2 MiB frames holding the pages the device writes
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
        # Complete lines only: the guest's serial console arrives a few bytes at a time, so
        # the last line may still be partial (a loop line without its GPA).
        content = path.read_text(errors="replace") if path.exists() else ""
        lines = [ln.rstrip("\r") for ln in content.split("\n")[:-1]]
        hit = next((ln for ln in lines if ln.startswith(text)), "")
        if hit:
            return hit
        if proc.poll() is not None:
            return ""
        time.sleep(0.2)
    return ""


def _guest_u32(qmp: Qmp, gpa: int, out: Path) -> int:
    dump = out / "count.bin"
    qmp.cmd("pmemsave", val=gpa, size=4, filename=str(dump))
    return int.from_bytes(dump.read_bytes(), "little")


def _copy(proc: subprocess.Popen[bytes], path: Path) -> None:
    assert proc.stderr is not None
    with open(path, "wb") as f:
        shutil.copyfileobj(proc.stderr, f)


def run(
    sim_argv: list[str],
    qemu_argv: list[str],
    out: Path,
    timeout: float,
    params: dict[str, int],
    steps: list[tuple[int, dict[str, int]]],
) -> MigResult:
    """sim_argv: `fastmap sim-run --device ...` up to `--`; qemu_argv: the guest's QEMU
    command line (its kernel command line set for the migration loop), without -incoming
    and -qmp. `params` go to migrate-set-parameters before `migrate`; each (round, params)
    of `steps` is applied once query-migrate's dirty-sync-count reaches round."""
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
        argv = [
            *sim_argv,
            "--trace",
            "/dev/stderr",
            "--",
            *qemu_argv,
            *trace,
            "-qmp",
            f"unix:{out / side}.qmp,server=on,wait=off",
            *extra,
        ]
        with open(out / f"mig-{side}.console", "wb") as console:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=console, stderr=subprocess.PIPE
            )
        drain = threading.Thread(target=_copy, args=(proc, out / f"mig-{side}.log"))
        drain.start()
        drains.append(drain)
        return proc

    t0 = time.monotonic()
    dst = start("dst", ["-incoming", f"unix:{sock}"])
    src = start("src", [])
    info: dict[str, Any] = {}
    rounds: dict[int, int] = {}
    verified = dma_verified = ""
    notes: list[str] = []
    count_at: list[int] = []
    frames = 0
    try:
        loop = _wait_for(out / "mig-src.console", LOOP_STARTED, src, timeout)
        m = re.search(r"count at GPA 0x([0-9a-f]+), pages in (\d+) 2MiB frames", loop)
        if not m:
            notes.append("the source guest's migration loop did not start")
            raise TimeoutError
        count_gpa, frames = int(m.group(1), 16), int(m.group(2))
        time.sleep(1.0)  # the device has been writing pages for a while
        qs, qd = Qmp(out / "src.qmp", timeout), Qmp(out / "dst.qmp", timeout)
        # switchover-ack (both sides, over the return path): the source does not stop the
        # guest before the destination has loaded the device's pre-copy initial data, so
        # the record always goes while the guest runs, however fast RAM converges.
        caps = [{"capability": c, "state": True} for c in ("return-path", "switchover-ack")]
        for q in (qd, qs):
            q.cmd("migrate-set-capabilities", capabilities=caps)
        qs.cmd("migrate-set-parameters", **params)
        pending = sorted(steps)
        count_at.append(_guest_u32(qs, count_gpa, out))
        qs.cmd("migrate", uri=f"unix:{sock}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = qs.cmd("query-migrate")
            ram = info.get("ram", {})
            # Pages sent by the end of each round (sampled: the last poll within the round).
            rounds[ram.get("dirty-sync-count", 0)] = ram.get("normal", 0)
            while pending and ram.get("dirty-sync-count", 0) >= pending[0][0]:
                qs.cmd("migrate-set-parameters", **pending.pop(0)[1])
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.05)
        if info.get("status") != "completed":
            notes.append(f"migration ended as {info.get('status')}: {info.get('error-desc', '')}")
            raise TimeoutError
        count_at.append(_guest_u32(qs, count_gpa, out))  # the source is paused now
        notes.append(f"destination after migration: {qd.cmd('query-status').get('status')}")
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
        for proc in (src, dst):  # a paused source or a waiting destination: QEMU quits
            if proc.poll() is None:
                proc.terminate()
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
    return MigResult(
        bool(verified and dma_verified),
        seconds,
        info,
        rounds,
        count_at,
        frames,
        verified,
        dma_verified,
        (out / "mig-src.console").read_text(errors="replace"),
        (out / "mig-dst.console").read_text(errors="replace"),
        src_log,
        dst_log,
        notes,
    )


def dirty_syncs(log: list[str]) -> list[int]:
    """Dirty pages the IOMMU reported per dirty sync, from a sim-run trace: QEMU reads the
    bitmap of each RAM section in ascending IOVA order, so a sync starts where IOVA drops."""
    syncs: list[int] = []
    last = -1
    for ln in log:
        m = re.search(r"IOMMU_HWPT_GET_DIRTY_BITMAP .*iova=0x([0-9a-f]+) .*-> dirty=(\d+)", ln)
        if not m:
            continue
        iova = int(m.group(1), 16)
        if iova <= last or not syncs:
            syncs.append(0)
        syncs[-1] += int(m.group(2))
        last = iova
    return syncs


@dataclass
class DeviceState:
    pre_copy: int  # bytes QEMU read from the data fd with the device in PRE_COPY
    stop_copy: int  # and in STOP_COPY
    precopy_infos: int  # successful VFIO_MIG_GET_PRECOPY_INFO calls
    entered_pre_copy: bool  # the sim-run trace shows the RUNNING -> PRE_COPY arc


def device_state(log: list[str]) -> DeviceState:
    """The device state QEMU saved, split by the state the device was in (its
    vfio_migration_set_device_state events) when vfio_save_block read it."""
    ds = DeviceState(0, 0, 0, False)
    phase = ""
    for ln in log:
        if m := re.search(r"vfio_migration_set_device_state .* state (\w+)", ln):
            phase = m.group(1)
        elif m := re.search(r"vfio_save_block .* data_size (\d+)", ln):
            if phase == "PRE_COPY":
                ds.pre_copy += int(m.group(1))
            elif phase == "STOP_COPY":
                ds.stop_copy += int(m.group(1))
        elif "VFIO_MIG_GET_PRECOPY_INFO" in ln and ln.endswith(" = 0"):
            ds.precopy_infos += 1
        elif re.search(r"VFIO_DEVICE_FEATURE flags=0x20002 state=PRE_COPY -> data_fd=\d+ = 0$", ln):
            ds.entered_pre_copy = True
    return ds


# The IOMMU sets one dirty bit per IOPTE; QEMU's RAM is mapped with 2 MiB IOPTEs where it can,
# so one device write dirties (and QEMU resends) the 512 pages of its 2 MiB frame.
PAGES_PER_FRAME = 512


def report(r: MigResult, label: str, expect_writes: bool) -> tuple[bool, list[str]]:
    """Whether the run verified, and its figures. expect_writes: the migration lasts long
    enough (seconds of slow rounds) that the device must have written pages while the IOMMU
    tracked them; a migration at full speed may be over before the guest's vCPU runs."""
    ram = r.info.get("ram", {})
    syncs = dirty_syncs(r.src_log)
    tracking = any(
        "IOMMU_HWPT_SET_DIRTY_TRACKING" in ln and "flags=0x1 = 0" in ln for ln in r.src_log
    )
    writes = r.count_at[1] - r.count_at[0] if len(r.count_at) == 2 else 0
    bound = r.frames * PAGES_PER_FRAME
    over = [n for n in syncs if n > bound]
    rounds = ram.get("dirty-sync-count", 0)
    ds = device_state(r.src_log)
    vfio_bytes = r.info.get("vfio", {}).get("transferred", 0)
    sent = sorted(r.rounds.items())
    per_round = [f"{b - a}" for (_, a), (_, b) in itertools.pairwise(sent)]
    lines = [
        f"  {r.verified}" if r.verified else "  destination guest: no migration verdict",
        f"  {r.dma_verified} (destination)" if r.dma_verified else "  no DMA verdict",
        f"  migration: {rounds} rounds (dirty syncs), {ram.get('normal', 0)} pages sent "
        f"(+{ram.get('duplicate', 0)} zero pages), {ram.get('transferred', 0) / 1e6:.1f} MB, "
        f"downtime {r.info.get('downtime', '?')} ms, total {r.info.get('total-time', '?')} ms, "
        f"device state {vfio_bytes} bytes; wall {r.seconds:.1f} s",
        f"  device state: {ds.pre_copy} bytes in pre-copy (guest running), {ds.stop_copy} "
        f"bytes in stop-copy (guest stopped); {ds.precopy_infos} VFIO_MIG_GET_PRECOPY_INFO",
        f"  pages sent by the end of each round (sampled): "
        f"{', '.join(f'{k}: {v}' for k, v in sent)}; per round after the first: "
        f"{', '.join(per_round[1:]) or '-'}",
        f"  device: {writes} page writes by DMA during migration (guest count "
        f"{'->'.join(map(str, r.count_at))}), into 64 pages in {r.frames} 2 MiB frame(s)",
        f"  IOMMU dirty pages per sync (GET_DIRTY_BITMAP): {', '.join(map(str, syncs))}; "
        f"bound {bound} = the device's frames x {PAGES_PER_FRAME} (IOPTE granularity): "
        + ("over-reported!" if over else "none over-reported")
        + (
            "; none lost: the destination checked every page the device wrote" if r.verified else ""
        ),
    ]
    lines += [f"  note: {n}" for n in r.notes]
    ok = r.ok and tracking and bool(syncs) and not over
    if expect_writes and not (writes > 0 and sum(syncs) > 0):
        ok = False
        lines.append("  expected device writes during migration and dirty pages reported")
    if not tracking:
        lines.append("  QEMU did not enable IOMMUFD dirty tracking")
    # The edu offers PRE_COPY: QEMU must have streamed its record while the guest ran, and
    # every byte it read must be accounted to one of the two phases.
    if not (ds.entered_pre_copy and ds.precopy_infos and ds.pre_copy > 0):
        ok = False
        lines.append("  QEMU did not use the device's PRE_COPY")
    if ds.pre_copy + ds.stop_copy != vfio_bytes:
        ok = False
        lines.append(
            f"  device state read ({ds.pre_copy + ds.stop_copy}) != QEMU's vfio "
            f"transferred ({vfio_bytes})"
        )
    summary = (
        f"migration verified ({label}): {rounds} rounds, {ram.get('normal', 0)} pages "
        f"sent, downtime {r.info.get('downtime', '?')} ms, {writes} device page writes "
        f"during migration, IOMMU reported {sum(syncs)} dirty pages, device state "
        f"{ds.pre_copy} bytes pre-copy + {ds.stop_copy} bytes stop-copy"
    )
    return ok, [*lines, summary if ok else f"migration FAILED ({label})"]
