"""tools/check_includes.py: csrc/ is layered, and the check finds cycles and violations."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from tests.script_module import ROOT, load_script


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return load_script(ROOT / "tools" / "check_includes.py", "check_includes")


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "csrc" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "csrc"


def test_repository_is_layered(check: ModuleType) -> None:
    assert check.problems() == []


def test_cycle_between_sim_folders_is_found(check: ModuleType, tmp_path: Path) -> None:
    csrc = write(
        tmp_path,
        {
            "sim/sim_kernel.h": '#include "sim/iommufd/ctx.h"\n',
            "sim/iommufd/ctx.h": '#include "sim/sim_kernel.h"\n',
        },
    )
    report = check.problems(csrc)
    assert "include cycle between folders: sim <-> sim/iommufd" in report
    assert "layer violation: sim/iommufd may not include sim" in report
    assert any("csrc/sim/iommufd/ctx.h" in line for line in report)


def test_downward_include_against_the_order_is_found(check: ModuleType, tmp_path: Path) -> None:
    csrc = write(
        tmp_path,
        {
            "sim/core/user_memory.h": '#include "sim/iommu/domain.h"\n',
            "sim/iommu/domain.h": "\n",
        },
    )
    assert check.problems(csrc) == [
        "layer violation: sim/core may not include sim/iommu",
        '    csrc/sim/core/user_memory.h: #include "sim/iommu/domain.h"',
    ]


def test_undeclared_folder_and_unresolved_include(check: ModuleType, tmp_path: Path) -> None:
    csrc = write(tmp_path, {"extra/x.h": '#include "nowhere.h"\n'})
    report = check.problems(csrc)
    assert 'unresolved include: csrc/extra/x.h: #include "nowhere.h"' in report
    assert "folder extra is not declared in tools/check_includes.py LAYERS" in report
