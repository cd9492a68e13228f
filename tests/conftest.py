"""Fixtures shared by every suite: the kernel transports and what each one offers.

`kernel` is parametrized over the transports, so one test written with raw uAPI structs runs
against both: "sim" (the embedded simulated kernel, always) and "real" (the running kernel,
only where /dev/iommu exists, i.e. inside the test VM: tools/vmtest/run.sh). The sim models
the newest kernel it knows unless FASTMAP_SIM_KERNEL_VERSION (e.g. 612) says otherwise;
tests that depend on the version read `kernel.version`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from fastmap import _core, uapi
from fastmap.errors import KernelError
from fastmap.kernel import Fd, Kernel, RealKernel
from tests.facilities import facility_of, missing, required
from tests.hugepages import HugePages, release, reserve

TRANSPORTS = ["sim", pytest.param("real", marks=pytest.mark.real_kernel)]

# Hypothesis profiles, chosen by HYPOTHESIS_PROFILE (budgets scale with tests/fuzzing.py):
# "default" (local) and "ci" (.ci/run) are derandomized, so a run is reproducible and CI
# cannot turn red on a new random draw; "fuzz" (`make fuzz`) draws fresh random inputs with
# many more examples, to find what the fixed draws miss.
settings.register_profile("default", derandomize=True)
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True, database=None)
settings.register_profile(
    "fuzz",
    derandomize=False,
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under a sanitizer build (FASTMAP_SANITIZER, set by make test-sanitize/test-tsan), skip
    the tests marked not_under_sanitizer, with the mark's reason."""
    sanitizer = os.environ.get("FASTMAP_SANITIZER")
    if not sanitizer:
        return
    for item in items:
        mark = item.get_closest_marker("not_under_sanitizer")
        if mark is not None:
            reason = mark.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"not under {sanitizer}: {reason}"))


@pytest.fixture(autouse=True)
def isolated_process_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with a fresh process-wide simulated machine: what `open_kernel()`,
    `IOMMUFDBackend()` and `VFIODevice(bdf)` share is shared within the test only."""
    import fastmap.sim

    monkeypatch.setattr(fastmap.sim, "_shared", None)


def make_kernel(kind: str) -> Kernel:
    """A fresh kernel of `kind`, or pytest.skip if this machine cannot provide it."""
    if kind == "real":
        if not os.path.exists("/dev/iommu"):
            missing("iommu", "no /dev/iommu here (run inside the VM: tools/vmtest/run.sh)")
        return RealKernel()
    if not hasattr(_core, "SimKernel"):
        pytest.skip("this build of fastmap._core has no simulated kernel")
    from fastmap.sim import SimKernel

    version = os.environ.get("FASTMAP_SIM_KERNEL_VERSION")
    return SimKernel(kernel_version=int(version)) if version else SimKernel()


@pytest.fixture(params=TRANSPORTS)
def kernel(request: pytest.FixtureRequest) -> Kernel:
    """The kernel under test: 'sim' or 'real'."""
    return make_kernel(request.param)


@pytest.fixture
def kernel_version(kernel: Kernel) -> int:
    """The Linux version the transport is (or models), as major*100+minor."""
    return kernel.version


@pytest.fixture
def iommufd(kernel: Kernel) -> Iterator[Fd]:
    """An open /dev/iommu."""
    with kernel.open_fd("/dev/iommu") as fd:
        yield fd


def _mock_domain_works(fd: Fd) -> tuple[bool, str]:
    alloc = uapi.new(uapi.iommu_ioas_alloc)
    fd.ioctl(uapi.IOMMU_IOAS_ALLOC, alloc)
    cmd = uapi.new(uapi.iommu_test_cmd, op=uapi.IOMMU_TEST_OP_MOCK_DOMAIN, id=alloc.out_ioas_id)
    try:
        fd.ioctl(uapi.IOMMU_TEST_CMD, cmd)
    except KernelError as e:
        return False, f"IOMMU_TEST_CMD(MOCK_DOMAIN) failed: {e.errno_name}"
    finally:
        for obj in (cmd.u.mock_domain.out_stdev_id, alloc.out_ioas_id):
            if obj:
                fd.ioctl(uapi.IOMMU_DESTROY, uapi.new(uapi.iommu_destroy, id=obj))
    return True, ""


@pytest.fixture
def selftest(kernel: Kernel, iommufd: Fd) -> bool:
    """Require the iommufd selftest interface with working mock domains.

    Real kernels have it only with CONFIG_IOMMUFD_TEST (ENOTTY otherwise), and refuse mock
    domains while the Intel VT-d driver is active (EINVAL): skip there. A simulator
    configured with iommufd_test must provide it, so there a failure is a failure.
    """
    if kernel.name == "sim" and kernel.config.iommufd_test:
        return True
    ok, why = _mock_domain_works(iommufd)
    if not ok:
        missing("selftest", f"no usable iommufd selftest on this kernel: {why}")
    return True


@pytest.fixture
def vfio_device(kernel: Kernel) -> str:
    """The path of a VFIO device cdev (/dev/vfio/devices/vfioN) on this transport."""
    if kernel.name == "real":
        from tests.conformance.devices import real_vfio_cdev

        path, why = real_vfio_cdev()
        if path is None:
            missing("vfio", why)
        return path
    from fastmap.sim import SimKernel

    assert isinstance(kernel, SimKernel)
    # An edu device (1234:11e8) bound to vfio-pci, as the VM tooling gives the real kernel.
    return str(kernel.machine.add_pci_device()["cdev"])


@pytest.fixture(scope="session")
def host_hugepages() -> Iterator[HugePages]:
    """COUNT huge pages free for the session, as in the VM, where root can reserve them;
    the old vm.nr_hugepages comes back at the end (tests/hugepages.py)."""
    pages = reserve()
    try:
        yield pages
    finally:
        release(pages)


# Real-kernel tier (FASTMAP_REQUIRE_REAL): see tests/facilities.py.
_REQUIRED = required()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not (_REQUIRED and report.skipped and item.get_closest_marker("real_kernel")):
        return
    if hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    facility = facility_of(reason)
    if facility in _REQUIRED:
        report.outcome = "failed"
        report.longrepr = (
            f"a real_kernel test skipped for lack of {facility!r}, which this run requires "
            f"(FASTMAP_REQUIRE_REAL={','.join(sorted(_REQUIRED))}): {reason}"
        )
