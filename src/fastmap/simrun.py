"""`fastmap sim-run`: run an unmodified, dynamically linked program on the simulated kernel.

The program runs with libfastmap_preload.so in LD_PRELOAD. Its /dev/iommu, /dev/vfio/vfio,
/dev/vfio/N, /dev/vfio/devices/vfioN and the VFIO part of sysfs are answered by a simulated
kernel built from FASTMAP_SIM_CONFIG (see `config_text`); every other file is the host's.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

#: What sim-run models unless told otherwise: the kernel of the VM tier (Linux 6.12) with
#: CONFIG_IOMMUFD_TEST, as the kernel selftests need.
DEFAULT_KERNEL_VERSION = 612


def lib_dir() -> Path:
    """The directory holding libfastmap_sim.so and libfastmap_preload.so."""
    return Path(__file__).resolve().parent


def preload_library() -> Path:
    return lib_dir() / "libfastmap_preload.so"


def sim_library() -> Path:
    return lib_dir() / "libfastmap_sim.so"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        help="a file of key=value lines (kernel_version, thp, iommufd_test, memlock, "
        "cap_ipc_lock, cap_sys_resource, dma_entry_limit, device); options below override it",
    )
    p.add_argument("--kernel-version", type=int, help="major*100+minor (default: 612)")
    p.add_argument("--no-thp", action="store_true", help="CONFIG_TRANSPARENT_HUGEPAGE off")
    p.add_argument("--no-iommufd-test", action="store_true", help="CONFIG_IOMMUFD_TEST off")
    p.add_argument(
        "--memlock", type=int, help="RLIMIT_MEMLOCK in bytes (charged without CAP_IPC_LOCK)"
    )
    p.add_argument("--no-cap-ipc-lock", action="store_true", help="charge pinned pages")
    p.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="SPEC",
        help="plug a PCI device: edu[,bdf=0000:00:03.0][,iommu=vtd|mock][,group=N][,dirty=0|1] "
        "(repeatable; the IOMMU offers HWPT dirty tracking unless dirty=0)",
    )
    p.add_argument(
        "--trace",
        type=Path,
        metavar="FILE",
        help="append each simulated call (ioctls decoded, opens, sysfs reads) to FILE, in "
        "order, and the region access counts at exit (FASTMAP_SIM_TRACE)",
    )
    p.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")


def config_text(args: argparse.Namespace) -> str:
    """FASTMAP_SIM_CONFIG for these options: the file's lines, then the options."""
    lines = [f"kernel_version={DEFAULT_KERNEL_VERSION}"]
    if args.config is not None:
        lines += args.config.read_text().splitlines()
    if args.kernel_version is not None:
        lines.append(f"kernel_version={args.kernel_version}")
    if args.no_thp:
        lines.append("thp=0")
    if args.no_iommufd_test:
        lines.append("iommufd_test=0")
    if args.memlock is not None:
        lines.append(f"memlock={args.memlock}")
    if args.no_cap_ipc_lock:
        lines.append("cap_ipc_lock=0")
    lines += [f"device={spec}" for spec in args.device]
    return "\n".join(lines) + "\n"


def environment(config: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a program runs in under sim-run."""
    env = dict(os.environ if base is None else base)
    preload = str(preload_library())
    env["LD_PRELOAD"] = f"{preload}:{env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else preload
    env["FASTMAP_SIM_CONFIG"] = config
    return env


def program_argv(program: Sequence[str]) -> list[str]:
    argv = list(program)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SystemExit(
            "fastmap sim-run: no program given (fastmap sim-run [options] -- PROGRAM ARGS...)"
        )
    return argv


def run(args: argparse.Namespace) -> int:
    """exec the program (this process becomes it, so its exit status is sim-run's)."""
    argv = program_argv(args.program)
    env = environment(config_text(args))
    if args.trace is not None:
        env["FASTMAP_SIM_TRACE"] = str(args.trace)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        raise SystemExit(f"fastmap sim-run: {argv[0]}: {e.strerror}") from e
    return 127  # not reached: execvpe returns only by raising
