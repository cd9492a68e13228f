#!/usr/bin/env python3
"""Unmodified QEMU on the simulated kernel: `fastmap sim-run -- qemu-system-x86_64 ...` with
the simulated edu device passed through with vfio-pci, once over IOMMUFD (`-object iommufd`)
and once over the legacy container + group, booting the VM tier's kernel with a one-program
initramfs (guest_dma.c) that has the device DMA to and from guest memory and checks it.

    tools/qemu_demo/run.py [--backend iommufd|legacy|both] [--migration ...] [--qemu PATH]
                           [--out DIR]

For each run it prints the guest's result line, the figures, and the start of the call log:
QEMU's own trace events (its hw/vfio and backends/iommufd functions) interleaved, in order,
with the uAPI calls the simulator answered (`fastmap sim-run --trace`). The full logs are
kept in --out. Then live migration (migrate.py), once at QEMU's own pace and once over a link
slower than the device writes: the guest keeps the device writing its pages by DMA, and the
destination guest checks them; it prints `migration verified` with rounds, pages sent,
downtime and the device state QEMU sent in pre-copy (the edu offers VFIO_MIGRATION_PRE_COPY)
and in stop-copy. In between, for each backend, a guest with a vIOMMU (QEMU's intel-iommu)
binds the device to its own vfio-pci and takes its DMA-complete interrupts, INTx then MSI, through
QEMU's vfio-pci and the simulator's SET_IRQS eventfds (guest_irq.c); it prints `guest
interrupts verified`. FASTMAP_VMTEST_LOCK=FILE: hold an flock on FILE while QEMU runs (a machine
shared by several users of TCG guests). Exit status 0 when every run verified.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import initramfs
import migrate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BDF = "0000:00:03.0"
VERIFIED = "guest DMA verified"
IRQ_VERIFIED = "guest interrupts verified"
# QEMU's trace events for the steps of vfio-pci realize on either backend (not the
# per-access ones: config and BAR reads and writes are counted by the sim-run trace).
QEMU_EVENTS = (
    "iommufd_*",
    "vfio_mdev",
    "vfio_attach_device",
    "vfio_get_device",
    "vfio_region_setup",
    "vfio_populate_device_*",
    "vfio_msi_setup",
    "vfio_msi_enable",
    "vfio_intx_enable",
    "vfio_intx_disable",
    "vfio_pci_reset",
    "vfio_listener_region_add_ram",
    "vfio_listener_region_del",
    "vfio_migration_realize",
)
UAPI_LINE = re.compile(r"^\s*\d+ (open|close|ioctl|mmap|dup|sysfs|fstat|stat) ")


@dataclass
class RunResult:
    backend: str
    ok: bool
    seconds: float
    verified: str
    log: list[str]
    console: str


def qemu_argv(
    qemu: str, kernel: Path, initrd: Path, backend: str, cmdline: str = "", viommu: bool = False
) -> list[str]:
    device = f"vfio-pci,host={BDF}"
    extra: list[str] = []
    if viommu:
        # QEMU refuses vfio-pci behind an intel-iommu without caching mode (it must see
        # every guest mapping to shadow it on the host IOMMU); the vIOMMU comes first.
        extra += ["-device", "intel-iommu,caching-mode=on"]
        cmdline += " intel_iommu=on"
    if backend == "iommufd":
        extra += ["-object", "iommufd,id=iommufd0"]
        device += ",iommufd=iommufd0"
    trace: list[str] = []
    for event in QEMU_EVENTS:
        trace += ["-trace", event]
    return [
        qemu, "-machine", "q35", "-accel", "tcg", "-smp", "1", "-m", "256M",
        "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
        "-monitor", "none", "-kernel", str(kernel), "-initrd", str(initrd),
        # no_timer_check: Linux's boot-time check of the timer interrupt panics ("IO-APIC +
        # timer doesn't work") when a TCG vCPU on a loaded host misses it; it proves nothing.
        "-append", (f"console=ttyS0 quiet rdinit=/init panic=-1 mitigations=off "
                    f"no_timer_check{cmdline}"),
        *extra, "-device", device, *trace,
    ]  # fmt: skip


@contextmanager
def vm_lock() -> Iterator[None]:
    path = os.environ.get("FASTMAP_VMTEST_LOCK")
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fastmap_cmd() -> list[str]:
    return [sys.executable, "-m", "fastmap.cli"]


def run_one(
    backend: str,
    qemu: str,
    kernel: Path,
    initrd: Path,
    out: Path,
    timeout: float,
    irq: bool = False,
) -> RunResult:
    """One QEMU run; `irq`: the interrupt guest (guest_irq.c) behind a vIOMMU."""
    # The sim-run trace and QEMU's trace events both go to stderr (a pipe), so they stay
    # in the order they happened.
    argv = [
        *fastmap_cmd(), "sim-run", "--device", f"edu,bdf={BDF},dirty=1", "--trace", "/dev/stderr",
        "--", *qemu_argv(qemu, kernel, initrd, backend, viommu=irq),
    ]  # fmt: skip
    name = f"{backend}-irq" if irq else backend
    marker = IRQ_VERIFIED if irq else VERIFIED
    with vm_lock():
        t0 = time.monotonic()
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        seconds = time.monotonic() - t0
    log = proc.stderr.splitlines()
    (out / f"{name}.log").write_text(proc.stderr)
    (out / f"{name}.console").write_text(proc.stdout)
    verified = next((ln for ln in proc.stdout.splitlines() if ln.startswith(marker)), "")
    return RunResult(
        backend, proc.returncode == 0 and bool(verified), seconds, verified, log, proc.stdout
    )


def excerpt(log: list[str], limit: int) -> list[str]:
    """The log up to vfio-pci realize's end (its INTx setup), uAPI lines marked."""
    lines: list[str] = []
    if limit <= 0:
        return lines
    for ln in log:
        tag = "uapi" if UAPI_LINE.match(ln) else "qemu"
        if ln.startswith("#"):
            continue
        lines.append(f"  [{tag}] {ln.strip()}")
        if len(lines) >= limit or ("VFIO_DEVICE_SET_IRQS" in ln and "index=0" in ln):
            break
    return lines


# Live migration runs: (label, parameters before `migrate`, (round, parameters) steps).
# "fast link": QEMU's own pace, unlimited bandwidth. "slow link": after the first round the
# link drops to 1 MiB/s, below the rate the device writes (about 5 MB/s of page data), and
# the 20 ms downtime limit cannot fit the 2 MiB frame the device dirties every round, so
# QEMU keeps resending it round after round until, at round 5, the link is opened again.
MIGRATIONS: dict[str, tuple[dict[str, int], list[tuple[int, dict[str, int]]]]] = {
    "fast link": ({"downtime-limit": 300, "max-bandwidth": 0}, []),
    "slow link": (
        {"downtime-limit": 20, "max-bandwidth": 32 << 20},
        [(2, {"max-bandwidth": 1 << 20}), (5, {"max-bandwidth": 0, "downtime-limit": 300})],
    ),
}


def run_migration(
    label: str, qemu: str, kernel: Path, initrd: Path, out: Path, timeout: float
) -> bool:
    sim = [*fastmap_cmd(), "sim-run", "--device", f"edu,bdf={BDF},dirty=1"]
    argv = qemu_argv(qemu, kernel, initrd, "iommufd", " fastmap_demo=migrate")
    params, steps = MIGRATIONS[label]
    mig_out = out / label.replace(" ", "-")
    mig_out.mkdir(exist_ok=True)
    with vm_lock():
        r = migrate.run(sim, argv, mig_out, timeout, params, steps)
    ok, lines = migrate.report(r, label, expect_writes=bool(steps))
    print(
        f"== live migration ({label}): QEMU to QEMU, each under its own sim-run, edu over "
        f"IOMMUFD doing DMA throughout ({'ok' if ok else 'FAILED'}; logs in {mig_out})"
    )
    if not ok:
        print(
            "  source console:\n" + "\n".join("    " + ln for ln in r.src_console.splitlines()[-8:])
        )
        print(
            "  destination console:\n"
            + "\n".join("    " + ln for ln in r.dst_console.splitlines()[-8:])
        )
    print("\n".join(lines))
    return ok


def figures(r: RunResult) -> list[str]:
    ioctls = [ln for ln in r.log if UAPI_LINE.match(ln) and " ioctl " in ln]
    maps = sum(1 for ln in ioctls if "IOAS_MAP " in ln or "MAP_DMA " in ln)
    unmaps = sum(1 for ln in ioctls if "IOAS_UNMAP " in ln or "UNMAP_DMA " in ln)
    failed = sorted({re.sub(r"^\s*\d+ ioctl fd=\d+ ", "", ln) for ln in ioctls if " = -E" in ln})
    access = next(
        (ln.split(":", 1)[1].strip() for ln in r.log if ln.startswith("# region accesses")), ""
    )
    out = [
        f"  wall time (sim-run + QEMU boot + DMA + power off): {r.seconds:.1f} s",
        f"  uAPI ioctls: {len(ioctls)} ({maps} maps, {unmaps} unmaps of guest RAM as QEMU's"
        " memory listener saw it change)",
        f"  region accesses through the simulator (reads/writes): {access}",
        "  BAR0 mmap'd by QEMU (guest BAR accesses are loads/stores on the trapped mapping): "
        + (
            "yes"
            if any(re.search(r" mmap fd=\d+ len=\S+ off=0x0 = 0$", ln) for ln in r.log)
            else "no"
        ),
    ]
    out += [f"  error answered (QEMU goes on): {f}" for f in failed]
    return out


def run_irq(backend: str, qemu: str, kernel: Path, initrd: Path, out: Path, timeout: float) -> bool:
    """The interrupt guest's run on `backend`, reported; True when it verified."""
    r = run_one(backend, qemu, kernel, initrd, out, timeout, irq=True)
    report(
        r,
        f"guest interrupts over {backend}: the guest's own vfio-pci (behind QEMU's "
        "intel-iommu) takes edu's INTx and MSI",
        with_log=False,
    )
    print("\n".join(irq_figures(r, out)))
    return r.ok


def report(r: RunResult, title: str, with_log: bool = True) -> None:
    """A run's heading and outcome: the verified line, or the console's (and log's) tail."""
    print(f"== {title} ({'ok' if r.ok else 'FAILED'})")
    if r.ok:
        print(f"  {r.verified}")
        return
    print("  console:\n" + "\n".join("    " + ln for ln in r.console.splitlines()[-15:]))
    if with_log:
        print("  log:\n" + "\n".join("    " + ln for ln in r.log[-15:]))


def irq_figures(r: RunResult, out: Path) -> list[str]:
    """What QEMU asked of the simulator while the guest took interrupts."""
    ioctls = [ln for ln in r.log if UAPI_LINE.match(ln) and " ioctl " in ln]
    # The guest's IOAS_MAP at IOVA 0x200000 reaches the simulator as QEMU's shadow map.
    shadow = sum(1 for ln in ioctls if re.search(r"(IOAS_MAP|MAP_DMA) .*iova=0x20[01]000 ", ln))
    unmasks = sum(1 for ln in ioctls if "VFIO_DEVICE_SET_IRQS flags=0x11 index=0 " in ln)
    msi = sum(1 for ln in ioctls if "VFIO_DEVICE_SET_IRQS flags=0x24 index=1 " in ln)
    return [
        f"  wall time (sim-run + QEMU boot + interrupts + power off): {r.seconds:.1f} s",
        f"  QEMU's shadow maps of the guest IOMMU's mappings at IOVA 0x200000: {shadow}; "
        f"INTx unmasks (SET_IRQS UNMASK): {unmasks}; MSI enables (SET_IRQS index=1): {msi}",
        f"  full log: {out}/{r.backend}-irq.log",
    ]


def build_guest(out: Path, name: str = "guest_dma", flags: tuple[str, ...] = ()) -> Path:
    """tools/qemu_demo/NAME.c, static, as the /init of its own initramfs."""
    cc = os.environ.get("CC", "cc")
    exe = out / name
    subprocess.run(
        [cc, "-static", "-O2", "-Wall", "-Wextra", "-Werror", *flags, "-o", str(exe),
         str(HERE / f"{name}.c")],
        check=True,
    )  # fmt: skip
    return initramfs.build(exe, out / f"{name}.gz")


def kernel_headers() -> str:
    """Linux 6.12 uAPI headers for guest_irq.c (VFIO cdev, iommufd): $FASTMAP_KERNEL_HEADERS
    or tools/kernel-headers.sh's cache (a distribution's may predate linux/iommufd.h)."""
    env = os.environ.get("FASTMAP_KERNEL_HEADERS")
    if env:
        return env
    found = subprocess.run([str(ROOT / "tools" / "kernel-headers.sh")], capture_output=True,
                           text=True)  # fmt: skip
    if found.returncode != 0 or not found.stdout.strip():
        raise SystemExit(f"no Linux 6.12 uAPI headers (tools/kernel-headers.sh):\n{found.stderr}")
    return found.stdout.strip()


def find_kernel() -> Path:
    found = subprocess.run(
        [str(ROOT / "tools" / "vmtest" / "kernel.sh"), "--no-build"], capture_output=True, text=True
    )
    if found.returncode != 0 or not found.stdout.strip():
        raise SystemExit("no guest kernel: tools/vmtest/kernel.sh builds one (about 18 min)")
    return Path(found.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("iommufd", "legacy", "both"), default="both")
    p.add_argument(
        "--qemu",
        default=os.environ.get("QEMU", "qemu-system-x86_64"),
        help="the QEMU binary to run (default: $QEMU or qemu-system-x86_64)",
    )
    p.add_argument("--kernel", type=Path, help="guest bzImage (default: the VM tier's)")
    p.add_argument("--out", type=Path, help="keep the logs here (default: a temporary dir)")
    p.add_argument("--timeout", type=float, default=240, help="seconds per QEMU run")
    p.add_argument(
        "--migration",
        choices=(*MIGRATIONS, "both", "none"),
        default="both",
        help="live migration runs after the DMA runs",
    )
    p.add_argument("--log-lines", type=int, default=60, help="call-log lines to print")
    p.add_argument(
        "--no-irq",
        action="store_true",
        help="skip the interrupt runs (guest vIOMMU, guest vfio-pci, INTx and MSI)",
    )
    args = p.parse_args(argv)
    if shutil.which(args.qemu) is None:
        raise SystemExit(f"{args.qemu} not found (tools/vmtest/install-qemu.sh installs it)")
    out = args.out or Path(tempfile.mkdtemp(prefix="fastmap-qemu-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    kernel = args.kernel or find_kernel()
    initrd = build_guest(out)
    irq_initrd = (
        None if args.no_irq else build_guest(out, "guest_irq", ("-isystem", kernel_headers()))
    )
    backends = ("iommufd", "legacy") if args.backend == "both" else (args.backend,)
    ok = True
    for backend in backends:
        r = run_one(backend, args.qemu, kernel, initrd, out, args.timeout)
        report(r, f"QEMU vfio-pci over {backend} on the simulated kernel")
        print("\n".join(figures(r)))
        print(f"  call log, QEMU's trace events and the uAPI calls in order ({out}/{backend}.log):")
        print("\n".join(excerpt(r.log, args.log_lines)))
        ok &= r.ok
    for backend in backends:
        if irq_initrd is not None:
            ok &= run_irq(backend, args.qemu, kernel, irq_initrd, out, args.timeout)
    migrations = (
        list(MIGRATIONS)
        if args.migration == "both"
        else []
        if args.migration == "none"
        else [args.migration]
    )
    for label in migrations:
        ok &= run_migration(label, args.qemu, kernel, initrd, out, args.timeout)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
