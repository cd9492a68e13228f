"""What `fastmap sim-run` adds per ioctl: the same cheap ioctl through libfastmap_sim
directly, through the interposer in the process hosting the simulator, and from a forked
child (forwarded to that process), with the host's bare system call for scale.

Needs gcc: the measuring program (simrun_bench.c, shipped with the package) is compiled on
first use.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from fastmap import simrun

MODES = ("direct", "owner", "child", "host")
SOURCE = Path(__file__).resolve().parent / "simrun_bench.c"


@dataclasses.dataclass(frozen=True)
class Row:
    mode: str
    calls: int
    ns_per_call: float


def build(out_dir: Path) -> Path:
    """Compile the measuring program against this package's libfastmap_sim.so."""
    if shutil.which("gcc") is None:
        raise RuntimeError("fastmap bench simrun needs gcc")
    lib = str(simrun.lib_dir())
    exe = out_dir / "simrun_bench"
    subprocess.run(
        [
            "gcc",
            "-O2",
            f"-I{lib}",
            "-o",
            str(exe),
            str(SOURCE),
            f"-L{lib}",
            "-lfastmap_sim",
            f"-Wl,-rpath,{lib}",
        ],
        check=True,
    )
    return exe


def measure(exe: Path, mode: str, calls: int) -> Row:
    argv = [str(exe), mode, str(calls)]
    if mode in ("owner", "child"):
        env = simrun.environment(f"kernel_version={simrun.DEFAULT_KERNEL_VERSION}\n")
    else:
        env = None
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
    name, ns = out.split()
    assert name == mode, out
    return Row(mode, calls, float(ns))


def run_simrun_benchmark(
    calls: int = 200_000,
    child_calls: int = 20_000,
    repeat: int = 3,
    seconds: float | None = None,
) -> list[Row]:
    """Best of `repeat` runs per mode; no new run of a mode starts once its runs have
    taken `seconds`."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        rows = []
        for mode in MODES:
            n = child_calls if mode == "child" else calls
            runs, t0 = [], time.perf_counter()
            for _ in range(repeat):
                runs.append(measure(exe, mode, n))
                if seconds is not None and time.perf_counter() - t0 >= seconds:
                    break
            rows.append(min(runs, key=lambda r: r.ns_per_call))
        return rows
