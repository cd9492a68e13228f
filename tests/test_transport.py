"""fastmap.errors and fastmap.kernel: typed errors, call naming, transport choice."""

from __future__ import annotations

import errno
import pickle

import pytest

from fastmap import _core, kernel, seam, uapi
from fastmap.errors import (
    BadAddressError,
    FastmapError,
    IovaInUseError,
    KernelError,
    NoMemoryError,
    ReservedRangeError,
    hint_for,
)

needs_sim = pytest.mark.skipif(not hasattr(_core, "SimKernel"), reason="no simulated kernel")


def test_subclass_per_errno() -> None:
    e = KernelError.from_errno(errno.EEXIST, "IOMMU_IOAS_MAP", {"iova": 0x1000})
    assert type(e) is IovaInUseError
    assert isinstance(e, OSError) and isinstance(e, FastmapError)
    assert e.errno == errno.EEXIST and e.errno_name == "EEXIST"
    assert type(KernelError.from_errno(errno.EADDRINUSE, "x")) is ReservedRangeError
    assert type(KernelError.from_errno(errno.ELOOP, "x")) is KernelError


def test_message_names_call_errno_and_values() -> None:
    m = uapi.new(
        uapi.iommu_ioas_map,
        ioas_id=1,
        flags=7,
        user_va=0x7F0000001000,
        length=0x800,
        iova=0x1000000,
    )
    e = KernelError.from_errno(errno.EINVAL, "IOMMU_IOAS_MAP", m.fields())
    text = str(e)
    assert text.startswith("IOMMU_IOAS_MAP failed: EINVAL (Invalid argument)")
    for part in ("ioas_id=1", "user_va=0x7f0000001000", "length=0x800", "iova=0x1000000"):
        assert part in text
    shown = text[text.index("[") : text.index("]")]
    assert "size=" not in shown and "reserved" not in shown
    assert "alignment" in text  # the hint


@pytest.mark.parametrize(
    ("call", "err", "words"),
    [
        ("IOMMU_IOAS_MAP", errno.ENOMEM, "RLIMIT_MEMLOCK"),
        ("IOMMU_IOAS_MAP", errno.EFAULT, "PCI BAR"),
        ("IOMMU_IOAS_MAP", errno.EINVAL, "alignment"),
        ("IOMMU_IOAS_ALLOW_IOVAS", errno.EADDRINUSE, "reserved"),
        ("open(/dev/iommu)", errno.ENOENT, "modprobe iommufd"),
        ("open(/dev/iommu)", errno.ENODEV, "iommufd module"),
        ("IOMMU_DESTROY", errno.EBUSY, "users"),
        ("IOMMU_HWPT_ALLOC", errno.EOPNOTSUPP, "dirty tracking"),
    ],
)
def test_hints(call: str, err: int, words: str) -> None:
    hint = hint_for(call, err)
    assert hint is not None and words in hint


def test_no_hint_when_unknown() -> None:
    assert hint_for("IOMMU_IOAS_MAP", errno.ELOOP) is None


def test_pickle_round_trip() -> None:
    e = KernelError.from_errno(errno.ENOMEM, "IOMMU_IOAS_MAP", {"length": 4096})
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is NoMemoryError and str(back) == str(e)


def test_default_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTMAP_KERNEL", "sim")
    assert seam.default_kind() == "sim"
    monkeypatch.setenv("FASTMAP_KERNEL", "real")
    assert seam.default_kind() == "real"
    monkeypatch.setenv("FASTMAP_KERNEL", "bogus")
    with pytest.raises(ValueError):
        seam.default_kind()
    monkeypatch.delenv("FASTMAP_KERNEL")
    monkeypatch.setattr(seam.os.path, "exists", lambda p: p == "/dev/iommu")
    assert seam.default_kind() == "real"
    monkeypatch.setattr(seam.os.path, "exists", lambda p: False)
    assert seam.default_kind() == "sim"


def test_real_kernel_version_parses() -> None:
    assert kernel.real_kernel_version() >= 300


def test_real_open_error_is_typed() -> None:
    k = kernel.RealKernel()
    with pytest.raises(KernelError) as info:
        k.open("/nonexistent/fastmap-node")
    assert info.value.errno == errno.ENOENT
    assert info.value.call == "open(/nonexistent/fastmap-node)"


def test_real_ioctl_error_is_typed() -> None:
    import os

    k = kernel.RealKernel()
    r, w = os.pipe()
    try:
        with pytest.raises(KernelError) as info:
            k.ioctl(r, uapi.IOMMU_IOAS_MAP, uapi.new(uapi.iommu_ioas_map, length=1))
        assert info.value.errno == errno.ENOTTY
        assert info.value.call == "IOMMU_IOAS_MAP"
        assert info.value.arguments["length"] == 1
    finally:
        os.close(r)
        os.close(w)


def test_fd_closes_once() -> None:
    import os

    k = kernel.RealKernel()
    fd = kernel.Fd(k, os.open("/dev/null", os.O_RDONLY))
    with fd:
        assert int(fd) >= 0
    assert fd.fd is None
    fd.close()  # idempotent
    with pytest.raises(ValueError):
        _ = fd.number


@needs_sim
def test_sim_config_mirrors_core() -> None:
    import dataclasses

    from fastmap.sim import SimConfig, SimKernel

    core_fields = {n for n in dir(_core.SimConfig()) if not n.startswith("_")}
    assert {f.name for f in dataclasses.fields(SimConfig)} == core_fields
    k = SimKernel(kernel_version=612)
    assert k.version == 612 and k.name == "sim" and k.sim.config.kernel_version == 612


@needs_sim
def test_open_kernel_sim() -> None:
    k = seam.open_kernel("sim")
    assert k.name == "sim"
    with k.open_fd("/dev/iommu") as fd:
        with pytest.raises(KernelError) as info:
            fd.ioctl(uapi.IOMMU_DESTROY, None)
        assert type(info.value) is BadAddressError


def test_each_error_is_the_builtin_oserror_its_errno_implies() -> None:
    # Code that catches FileExistsError, NotADirectoryError, ... around a kernel call keeps
    # working whichever layer raised.
    for err in (errno.ENOENT, errno.EEXIST, errno.EPERM, errno.EACCES, errno.ENOTDIR, errno.EISDIR):
        e = KernelError.from_errno(err, "x")
        assert isinstance(e, type(OSError(err, ""))) and isinstance(e, KernelError), err
    assert type(KernelError.from_errno(errno.ENOTDIR, "x")) is type(
        KernelError.from_errno(errno.ENOTDIR, "y")
    )
