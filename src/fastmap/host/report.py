"""What `fastmap doctor` found: findings grouped in sections, each with its fix."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["ok", "info", "warn", "fail"]
_MARK = {"ok": "ok  ", "info": "    ", "warn": "WARN", "fail": "FAIL"}


@dataclass(frozen=True)
class Finding:
    """One fact about the host. `fail` makes the host unusable for fastmap's kernel paths;
    `warn` limits what works; `fix` is the command (or step) that repairs it."""

    section: str
    status: Status
    text: str
    fix: str | None = None


@dataclass
class Report:
    """Findings in the order they were made, plus a one-paragraph verdict."""

    title: str
    findings: list[Finding] = field(default_factory=list)
    verdict: str = ""

    def add(self, section: str, status: Status, text: str, fix: str | None = None) -> None:
        self.findings.append(Finding(section, status, text, fix))

    @property
    def usable(self) -> bool:
        """No finding failed: fastmap can open /dev/iommu (or this is the simulator)."""
        return not any(f.status == "fail" for f in self.findings)

    @property
    def exit_code(self) -> int:
        """0 usable, 1 not."""
        return 0 if self.usable else 1

    def render(self) -> str:
        lines = [self.title]
        section = None
        for f in self.findings:
            if f.section != section:
                section = f.section
                lines.append(f"\n{section}")
            lines.append(f"  {_MARK[f.status]} {f.text}")
            if f.fix:
                fix_lines = f.fix.splitlines()
                lines.append(f"       fix: {fix_lines[0]}")
                lines.extend(f"            {line}" for line in fix_lines[1:])
        if self.verdict:
            lines.append(f"\n{self.verdict}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "title": self.title,
                "usable": self.usable,
                "verdict": self.verdict,
                "findings": [asdict(f) for f in self.findings],
            },
            indent=2,
        )
