"""QEMU 10, unmodified, on the simulated kernel (tools/qemu_demo/run.py, `make demo-qemu`):
vfio-pci passes the simulated edu device through to a TCG guest over IOMMUFD and over the
legacy container + group; the guest has it DMA to and from its memory and checks every byte.
The uAPI log must show QEMU's own IOMMUFD sequence (bind, GET_HW_INFO, IOAS, HWPT_ALLOC
with dirty tracking for a device whose IOMMU can track, attach) and the legacy one.
Then live migration from one QEMU to another, each under its own sim-run, while the device
keeps writing guest pages by DMA: the destination guest checks every page the device wrote
and the device's own state, and the source's log must show QEMU's IOMMUFD dirty tracking
(SET_DIRTY_TRACKING, GET_DIRTY_BITMAP) and the VFIO migration arcs it took: the edu offers
PRE_COPY, so QEMU sends the device's record while the guest runs (GET_PRECOPY_INFO on the
data fd) and the rest after STOP_COPY on the same fd.

About 10-30 s per backend and per migration of TCG; skipped without QEMU >= 10, the VM
tier's kernel or a static libc (the guest's init is a static program)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.simrun.conftest import ROOT, kernel_headers

pytestmark = pytest.mark.not_under_sanitizer(
    reason="sim-run's interposer and libfastmap_sim.so are not rebuilt with the sanitizer"
)

RUN = ROOT / "tools" / "qemu_demo" / "run.py"


def _qemu_major() -> int:
    if shutil.which("qemu-system-x86_64") is None:
        return 0
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    m = re.search(r"version (\d+)\.", out.stdout)
    return int(m.group(1)) if m else 0


def _require_tools(tmp_path: Path) -> str:
    """Skips without what the demo needs; returns the uAPI headers' include directory."""
    if _qemu_major() < 10:
        pytest.skip("needs qemu-system-x86_64 >= 10 (tools/vmtest/install-qemu.sh)")
    kernel = subprocess.run([str(ROOT / "tools" / "vmtest" / "kernel.sh"), "--no-build"],
                            capture_output=True, text=True)  # fmt: skip
    if kernel.returncode != 0:
        pytest.skip("needs the VM tier's kernel (tools/vmtest/kernel.sh)")
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    built = subprocess.run(["cc", "-static", "-o", str(tmp_path / "probe"), str(probe)],
                           capture_output=True)  # fmt: skip
    if built.returncode != 0:
        pytest.skip("needs a static libc (libc6-dev) for the guest's init")
    headers = kernel_headers()
    if headers is None:
        pytest.skip("needs Linux 6.12 uAPI headers (tools/kernel-headers.sh)")
    return headers


def _in_order(log: str, steps: list[str]) -> list[str]:
    """The uAPI lines matching each step's pattern, each after the previous one."""
    lines = [ln for ln in log.splitlines() if re.match(r"^\s*\d+ ", ln)]
    found: list[str] = []
    i = 0
    for step in steps:
        while i < len(lines) and not re.search(step, lines[i]):
            i += 1
        assert i < len(lines), f"no {step!r} after {found[-1:]} in the uAPI log:\n{log}"
        found.append(lines[i])
        i += 1
    return found


def test_qemu_vfio_pci_guest_dma(tmp_path: Path) -> None:
    headers = _require_tools(tmp_path)
    out = tmp_path / "logs"
    # run.py bounds each QEMU run (--timeout); a FASTMAP_VMTEST_LOCK wait comes on top.
    result = subprocess.run([sys.executable, str(RUN), "--out", str(out), "--timeout", "150"],
                            capture_output=True, text=True,
                            env={**os.environ, "FASTMAP_KERNEL_HEADERS": headers})  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert result.stdout.count("guest DMA verified: 16 rounds, 64 DMAs") == 2, result.stdout
    irqs = "guest interrupts verified: 16 DMA-complete interrupts (8 INTx, 8 MSI)"
    assert result.stdout.count(irqs) == 2, result.stdout
    assert "migration verified (fast link)" in result.stdout, result.stdout
    assert "migration verified (slow link)" in result.stdout, result.stdout
    # Over the slow link the device's frame is resent round after round: more than 2 rounds.
    slow = re.search(r"migration verified \(slow link\): (\d+) rounds", result.stdout)
    assert slow and int(slow.group(1)) > 2, result.stdout

    iommufd = (out / "iommufd.log").read_text()
    _in_order(iommufd, [
        r"open /dev/vfio/devices/vfio0 = \d+",
        r"open /dev/iommu = \d+",
        r"VFIO_DEVICE_BIND_IOMMUFD .* = 0",
        r"IOMMU_GET_HW_INFO dev=1 -> type=1 caps=0x1 = 0",
        r"IOMMU_IOAS_ALLOC -> ioas=\d+ = 0",
        r"IOMMU_HWPT_ALLOC flags=0x2 .* = 0",
        r"VFIO_DEVICE_ATTACH_IOMMUFD_PT .* = 0",
        r"IOMMU_IOAS_MAP ioas=\d+ flags=0x7 .* len=0x10000000 -> iova=0x0 = 0",
        r"VFIO_DEVICE_GET_INFO = 0",
        r"VFIO_DEVICE_SET_IRQS flags=0x24 index=0 .* = 0",
    ])  # fmt: skip
    legacy = (out / "legacy.log").read_text()
    _in_order(legacy, [
        r"open /dev/vfio/0 = \d+",
        r"VFIO_GROUP_GET_STATUS = 0",
        r"open /dev/vfio/vfio = \d+",
        r"VFIO_GROUP_SET_CONTAINER .* = 0",
        r"VFIO_SET_IOMMU arg=3 = 0",
        r"VFIO_IOMMU_MAP_DMA flags=0x3 .* iova=0x0 size=0x10000000 = 0",
        r"VFIO_GROUP_GET_DEVICE_FD \"0000:00:03.0\" = \d+",
        r"VFIO_DEVICE_SET_IRQS flags=0x24 index=0 .* = 0",
    ])  # fmt: skip
    # The edu offers PRE_COPY, so QEMU streams its state while the guest runs: RUNNING ->
    # PRE_COPY hands out the data fd and GET_PRECOPY_INFO on it says the whole record is the
    # initial data; PRE_COPY -> STOP_COPY keeps that fd (data_fd -1); STOP ends the session.
    # MIG_DEVICE_STATE sets are flags=0x20002 (SET | feature 2); MIG_DATA_SIZE GET 0x10009.
    for side in ("fast-link", "slow-link"):
        src = (out / side / "mig-src.log").read_text()
        found = _in_order(src, [
            r"VFIO_DEVICE_FEATURE flags=0x10001 = 0",  # GET MIGRATION
            r"IOMMU_HWPT_SET_DIRTY_TRACKING hwpt=\d+ flags=0x1 = 0",
            r"IOMMU_HWPT_GET_DIRTY_BITMAP .* = 0",
            r"VFIO_DEVICE_FEATURE flags=0x10009 = 0",
            r"VFIO_DEVICE_FEATURE flags=0x20002 state=PRE_COPY -> data_fd=\d+ = 0",
            r"VFIO_MIG_GET_PRECOPY_INFO -> initial_bytes=4168 dirty_bytes=\d+ = 0",
            r"VFIO_DEVICE_FEATURE flags=0x20002 state=STOP_COPY -> data_fd=-1 = 0",
            r"VFIO_DEVICE_FEATURE flags=0x20002 state=STOP -> data_fd=-1 = 0",
        ])  # fmt: skip
        data_fd = re.search(r"data_fd=(\d+)", found[4])
        assert data_fd and f"ioctl fd={data_fd.group(1)} VFIO_MIG_GET_PRECOPY_INFO" in found[5]
        assert "new state PRE_COPY, recover state RUNNING" in src, src  # QEMU's own event
        # The whole record (4168 bytes) went while the guest ran, and with switchover-ack the
        # destination acknowledged it before the source stopped the guest.
        assert "vfio_save_block  (0000:00:03.0) data_size 4168" in src, src
        dst = (out / side / "mig-dst.log").read_text()
        assert "vfio_load_state_device_data  (0000:00:03.0) size 4168 ret 0" in dst, dst
        # QEMU's VFIO_MIG_FLAG_DEV_INIT_DATA_SENT: the source's precopy initial_bytes reached
        # 0, the destination's cue to acknowledge the switchover.
        assert "vfio_load_state  (0000:00:03.0) data 0xffffffffef100005" in dst, dst
    for label in ("fast link", "slow link"):
        m = re.search(
            rf"migration verified \({label}\): .* device state (\d+) bytes pre-copy "
            rf"\+ (\d+) bytes stop-copy",
            result.stdout,
        )
        assert m and int(m.group(1)) >= 4168, result.stdout
    # The guest's own IOAS_MAP at IOVA 0x200000 (its vIOMMU's page table) reaches the simulator
    # as QEMU's shadow map; the guest's INTx unmasks after each interrupt become QEMU's, then
    # the guest switches to MSI, and QEMU with it.
    irq_steps = [
        r"VFIO_DEVICE_SET_IRQS flags=0x11 index=0 start=0 count=1 = 0",  # INTx UNMASK
        r"VFIO_DEVICE_SET_IRQS flags=0x21 index=0 start=0 count=0 = 0",  # INTx off
        r"VFIO_DEVICE_SET_IRQS flags=0x24 index=1 start=0 count=1 = 0",  # MSI eventfd
        r"VFIO_DEVICE_SET_IRQS flags=0x21 index=1 start=0 count=0 = 0",  # MSI off
    ]
    iommufd_irq = (out / "iommufd-irq.log").read_text()
    _in_order(iommufd_irq, [
        r"IOMMU_IOAS_MAP ioas=\d+ flags=0x7 .* len=0x1000 -> iova=0x200000 = 0",
        r"IOMMU_IOAS_MAP ioas=\d+ flags=0x7 .* len=0x1000 -> iova=0x201000 = 0",
        *irq_steps,
    ])  # fmt: skip
    legacy_irq = (out / "legacy-irq.log").read_text()
    _in_order(legacy_irq, [
        r"VFIO_IOMMU_MAP_DMA flags=0x3 .* iova=0x200000 size=0x1000 = 0",
        r"VFIO_IOMMU_MAP_DMA flags=0x3 .* iova=0x201000 size=0x1000 = 0",
        *irq_steps,
    ])  # fmt: skip
    for log in (iommufd_irq, legacy_irq):
        unmasks = re.findall(r"VFIO_DEVICE_SET_IRQS flags=0x11 index=0 .* = 0", log)
        assert len(unmasks) == 8, log  # one per INTx the guest took
    for log in (iommufd, legacy):
        # The guest's config accesses went through the simulator's device file, and its BAR0
        # accesses too: by pread/pwrite, or through QEMU's mmap of the region when the
        # simulator offers one (VFIO_REGION_INFO_FLAG_MMAP).
        assert re.search(r"# region accesses .*config [1-9]\d*/[1-9]\d*", log), log
        bar_rw = re.search(r"# region accesses .*BAR0 [1-9]\d*/[1-9]\d*", log)
        bar_mmap = re.search(r"^\s*\d+ mmap fd=\d+ len=0x100000 off=0x0 = 0$", log, re.M)
        assert bar_rw or bar_mmap, log
