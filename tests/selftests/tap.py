"""The kselftest harness's TAP output, reduced to one outcome per test.

Used by tools/selftests/record-real.sh (``python -m tests.selftests.tap record``) to keep the
real kernel's outcomes in the repository, and by the suite that compares the simulator's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

_RESULT = re.compile(r"^(ok|not ok) (\d+) (\S+)(?: # (SKIP|XFAIL|XPASS)\b.*)?$")
# "# path/iommufd.c:123:name:Expected ..." lines name where a failing test stopped.
_WHERE = re.compile(r"^# \S*?([\w.]+\.c:\d+):")


def outcomes(tap: str) -> dict[str, str]:
    """``{test name: "pass" | "fail" | "skip" | "xfail" | "xpass"}`` from TAP text."""
    out: dict[str, str] = {}
    for line in tap.splitlines():
        m = _RESULT.match(line.strip())
        if not m:
            continue
        status, _, name, directive = m.groups()
        if directive:
            out[name] = directive.lower()
        else:
            out[name] = "pass" if status == "ok" else "fail"
    return out


def failure_sites(tap: str) -> dict[str, str]:
    """For each failing test, the first ``file.c:line`` its log names (for the reader)."""
    sites: dict[str, str] = {}
    pending: str | None = None
    for line in tap.splitlines():
        line = line.strip()
        if line.startswith("#  RUN "):
            pending = None
            continue
        w = _WHERE.match(line)
        if w and pending is None:
            pending = w.group(1)
            continue
        m = _RESULT.match(line)
        if m:
            if m.group(1) == "not ok" and pending:
                sites[m.group(3)] = pending
            pending = None
    return sites


def _record(args: argparse.Namespace) -> int:
    doc: dict[str, object] = {"kernel": args.kernel}
    for key, path in (("iommufd", args.iommufd), ("iommufd_fail_nth", args.fail_nth)):
        text = Path(path).read_text(errors="replace")
        res = outcomes(text)
        if not res:
            print(f"{path}: no TAP results", file=sys.stderr)
            return 1
        doc[key] = res
        doc[key + "_failure_sites"] = failure_sites(text)
    json.dump(doc, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.selftests.tap")
    sub = p.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="outcomes of both programs as JSON on stdout")
    rec.add_argument("--kernel", required=True)
    rec.add_argument("--iommufd", required=True)
    rec.add_argument("--fail-nth", required=True)
    args = p.parse_args(argv)
    return _record(args)


if __name__ == "__main__":
    raise SystemExit(main())
