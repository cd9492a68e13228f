"""fastmap's uAPI layouts and constants against the kernel's own headers.

A tiny C program, compiled against Linux's uAPI headers (linux-libc-dev >= 6.12, fetched by
tools/kernel-headers.sh when the system's are older), prints sizeof/offsetof of every struct
and field fastmap defines and the value of every constant; each must match what fastmap's
single C++ definition says.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fastmap import _core

# Defined by the selftest header (drivers/iommu/iommufd/iommufd_test.h), not the uAPI.
SELFTEST_ONLY = re.compile(
    r"^(IOMMU_TEST_|MOCK_|IOMMU_HW_INFO_TYPE_SELFTEST|IOMMU_HW_INFO_SELFTEST)"
)
SELFTEST_STRUCTS = re.compile(r"^iommu_test_")
# fastmap's names for members iommufd.h spells with a leading double underscore (vfio.h
# does not).
KERNEL_FIELD_NAMES = {"reserved": "__reserved", "reserved2": "__reserved2"}
# Explicit padding that is implicit in the kernel's structs.
PADDING = {"pad"}
# Constants that arrived after 6.12 (MAP_FILE, vIOMMU and SMMUv3 in 6.13, CHANGE_PROCESS and
# PASID later): absent from a 6.12 header, present in newer ones.
MAY_BE_ABSENT = {
    "IOMMU_IOAS_MAP_FILE",
    "IOMMU_VIOMMU_ALLOC",
    "IOMMU_VDEVICE_ALLOC",
    "IOMMU_HWPT_DATA_ARM_SMMUV3",
    "IOMMU_HW_INFO_TYPE_ARM_SMMUV3",
    "IOMMU_HWPT_ALLOC_PASID",
    "IOMMU_IOAS_CHANGE_PROCESS",
}
# Structs that arrived after 6.12.
STRUCTS_AFTER_6_12 = {"iommu_ioas_map_file", "iommu_ioas_change_process"}


def _has_new_headers(include: Path) -> bool:
    header = include / "linux" / "iommufd.h"
    return header.is_file() and "IOMMU_HWPT_GET_DIRTY_BITMAP" in header.read_text()


def _find_headers() -> Path | None:
    env = os.environ.get("FASTMAP_KERNEL_HEADERS")
    candidates = [Path(env)] if env else []
    candidates.append(Path("/usr/include"))
    cache = Path(os.environ.get("FASTMAP_CACHE", Path.home() / ".cache" / "fastmap"))
    candidates += sorted(cache.glob("linux-libc-dev-6.*/usr/include"), reverse=True)
    return next((c for c in candidates if _has_new_headers(c)), None)


HEADERS = _find_headers()
# CI sets FASTMAP_REQUIRE_HEADERS=1: there the check runs or fails, never skips.
_REQUIRE = os.environ.get("FASTMAP_REQUIRE_HEADERS") == "1"
_MISSING = [
    why
    for lacking, why in (
        (HEADERS is None, "no Linux >= 6.12 uAPI headers: run tools/kernel-headers.sh"),
        (shutil.which("cc") is None, "no C compiler"),
    )
    if lacking
]


@pytest.fixture(autouse=True)
def _headers_available() -> None:
    if _MISSING:
        message = "; ".join(_MISSING)
        if _REQUIRE:
            pytest.fail(f"{message} (FASTMAP_REQUIRE_HEADERS=1)")
        pytest.skip(message)


def _compile_and_run(tmp_path: Path, body: list[str]) -> subprocess.CompletedProcess[str]:
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n#include <linux/iommufd.h>\n"
        "#include <linux/vfio.h>\nint main(void) {\n" + "\n".join(body) + "\nreturn 0;\n}\n"
    )
    exe = tmp_path / "layout"
    build = subprocess.run(
        ["cc", "-std=c11", "-I", str(HEADERS), "-o", str(exe), str(src)],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0:
        return build
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True)


def _uapi_structs() -> list[tuple[str, int, bool, list[tuple[str, int, int, str, int]]]]:
    """fastmap's uAPI structs that the kernel headers at HEADERS define."""
    assert HEADERS is not None
    text = "".join((HEADERS / "linux" / h).read_text() for h in ("iommufd.h", "vfio.h"))
    ours = [s for s in _core.uapi_structs() if not SELFTEST_STRUCTS.match(s[0])]
    absent = {s[0] for s in ours if not re.search(rf"\b(struct|union) {s[0]} {{", text)}
    assert absent <= STRUCTS_AFTER_6_12, f"not in the kernel headers: {sorted(absent)}"
    return [s for s in ours if s[0] not in absent]


def test_struct_layouts_match_kernel_headers(tmp_path: Path) -> None:
    body = []
    expected: dict[str, int] = {}
    for name, size, is_union, fields in _uapi_structs():
        kind = "union" if is_union else "struct"
        body.append(f'printf("{name} %zu\\n", sizeof({kind} {name}));')
        expected[name] = size
        for field, offset, _fsize, _ftype, _count in fields:
            if field in PADDING:
                continue
            renamed = name.startswith("iommu_")
            kfield = KERNEL_FIELD_NAMES.get(field, field) if renamed else field
            body.append(f'printf("{name}.{field} %zu\\n", offsetof({kind} {name}, {kfield}));')
            expected[f"{name}.{field}"] = offset
    result = _compile_and_run(tmp_path, body)
    assert result.returncode == 0, result.stderr
    measured = dict(line.rsplit(" ", 1) for line in result.stdout.splitlines())
    mismatches = {k: (v, int(measured[k])) for k, v in expected.items() if int(measured[k]) != v}
    assert not mismatches, f"fastmap vs kernel header (fastmap, kernel): {mismatches}"
    assert len(expected) > 150  # every struct and field was compared


def test_constants_match_kernel_headers(tmp_path: Path) -> None:
    names = sorted(n for n in _core.uapi_constants() if not SELFTEST_ONLY.match(n))
    absent: set[str] = set()
    # Compile; names the header does not declare are reported by the compiler and dropped.
    for _ in range(len(names)):
        present = [n for n in names if n not in absent]
        body = [f'printf("{n} %llu\\n", (unsigned long long)({n}));' for n in present]
        result = _compile_and_run(tmp_path, body)
        if result.returncode == 0:
            break
        missing = set(re.findall("[\u2018'](\\w+)[\u2019'] undeclared", result.stderr))
        assert missing, result.stderr
        absent |= missing
    else:
        pytest.fail("could not compile the constants program")
    assert absent <= MAY_BE_ABSENT, f"not in the kernel headers: {sorted(absent - MAY_BE_ABSENT)}"
    measured = {k: int(v) for k, v in (line.rsplit(" ", 1) for line in result.stdout.splitlines())}
    ours = _core.uapi_constants()
    mismatches = {k: (ours[k], v) for k, v in measured.items() if ours[k] != v}
    assert not mismatches, f"fastmap vs kernel header (fastmap, kernel): {mismatches}"
    assert len(measured) > 90
