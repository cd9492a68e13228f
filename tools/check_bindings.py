#!/usr/bin/env python3
"""Check that csrc/bindings converts types and releases the GIL, and does nothing else.

The rule, applied to every .cc and .h in csrc/bindings after comments and string and
character literals are removed: the code may call into the core, convert arguments and
results, and release the GIL; it may not compute. Concretely, it contains none of

- loops that count or repeat: `while`, `do`, `goto`, `switch`, and `for` other than the
  range-for `for (x : xs)` (converting a container element by element);
- the conditional operator `?:`;
- arithmetic, comparison or logical operators, and shifts: binary `+ - * / % == != < > <= >=
  && || << >>` written with spaces on both sides as the code style (clang-format) writes
  them, `!=`/`==`/`<=`/`>=` in any spacing, `++`, `--`, and compound assignments `+= -= *=
  /= %= <<= >>= |= &= ^=`; bit operations `| & ^` likewise.

So an `if` can only test a value for truth (an optional, a pointer, an error, a loader's
result), never compare values. The few documented exceptions are in ALLOWED below, each
with its reason; a finding not listed there fails the check.

Run from anywhere: `python3 tools/check_bindings.py [files...]` (exit status 1 on a finding).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINDINGS = ROOT / "csrc" / "bindings"

# file name -> {reason: the stripped lines that reason covers}. Lines are matched exactly.
_ALLOWED_BY_REASON: dict[str, dict[str, tuple[str, ...]]] = {
    "errno_error.cc": {
        "the error convention itself: the one place a core -errno becomes the exception": (
            "if (rc < 0) throw ErrnoError(static_cast<int>(-rc), call);",
        ),
    },
    # PEP 3118 exports: a bool argument becomes the export's request flags, and a refused
    # export becomes the ValueError that names the argument.
    "bind_buffer.cc": {
        "bool -> PEP 3118 flags": (
            "const int flags = PyBUF_ANY_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);",
        ),
    },
    "cbuffer.h": {
        "bool -> PEP 3118 flags": (
            "const int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);",
        ),
        "the failed conversion's message": (
            'throw pybind11::value_error(std::string(what) + " must be a C-contiguous" +',
            '(writable ? " writable" : "") + " buffer (" + why + ")");',
        ),
    },
    # numpy's array flags are a bit set by pybind11's design.
    "bind_engine.cc": {
        "numpy conversion flags": (
            "using U64Array = py::array_t<std::uint64_t, py::array::c_style"
            " | py::array::forcecast>;",
        ),
    },
    "bind_mapper.cc": {
        "numpy conversion flags": (
            "using U64Array = py::array_t<std::uint64_t, py::array::c_style"
            " | py::array::forcecast>;",
        ),
        "a null C string (no failing call) converts to an empty str": (
            "return std::make_tuple(e.errno_value, e.index,"
            ' std::string(e.call ? e.call : ""), e.rollback_failed);',
        ),
    },
    # The seam's raw ioctl/open/pread take arbitrary Python objects. A value that cannot be
    # converted faithfully to the C argument (a bool or out-of-range int, a struct shorter
    # than its own size header says, a path the C string would cut at a NUL) is refused the
    # way a failed conversion is, with a ValueError/TypeError naming it, before the kernel
    # sees it.
    "bind_seam.cc": {
        "int conversion": (
            "if (!PyLong_Check(value.ptr()) || PyBool_Check(value.ptr())) {",
            'throw py::type_error(std::string(what) + " must be an integer");',
            "if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {",
            'throw py::value_error(std::string(what) + "=" + py::str(value).cast<std::string>() +',
        ),
        "struct conversion": (
            "if (buf.size() < sizeof size) {",
            'throw py::value_error("ioctl arg of " + std::to_string(buf.size()) +',
            "if (size > buf.size()) {",
            'throw py::value_error("ioctl arg is " + std::to_string(buf.size()) +',
            '" bytes but its size field says " + std::to_string(size));',
        ),
        "str -> C string conversion": (
            "if (path.find('\\0') != std::string::npos)"
            ' throw py::value_error("path contains a NUL byte");',
        ),
        "pread's result is -errno (an int, for fastmap.kernel) or a count (the bytes read)": (
            "if (n < 0) return py::int_(n);",
        ),
    },
    "bind_sim.cc": {
        "read's result is -errno (an int, for fastmap.sim) or a count (the bytes read)": (
            "if (n < 0) return py::int_(n);",
        ),
    },
}

# (file name, stripped line) -> why this line may stay.
ALLOWED: dict[tuple[str, str], str] = {
    (name, line): reason
    for name, reasons in _ALLOWED_BY_REASON.items()
    for reason, lines in reasons.items()
    for line in lines
}

_FORBIDDEN: list[tuple[str, re.Pattern[str]]] = [
    ("loop or jump", re.compile(r"\b(while|do|goto|switch)\b")),
    ("counting for loop (only range-for converts)", re.compile(r"\bfor\s*\([^)]*;")),
    ("conditional operator", re.compile(r"\s\?\s")),
    ("comparison", re.compile(r"==|!=|<=|>=")),
    ("increment or decrement", re.compile(r"\+\+|--")),
    ("compound assignment", re.compile(r"(\+|-|\*|/|%|<<|>>|\||&|\^)=")),
    (
        "arithmetic, comparison, logic, bit operation or shift",
        re.compile(r"\s(\+|-|\*|/|%|<|>|&&|\|\||<<|>>|\||&|\^)\s"),
    ),
]

_COMMENT_OR_LITERAL = re.compile(
    r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", re.S
)


def _blank(m: re.Match[str]) -> str:
    text = m.group(0)
    if text.startswith("/"):
        return re.sub(r"[^\n]", " ", text)
    return text[0] + " " * (len(text) - 2) + text[-1]


def strip(source: str) -> str:
    """The source with comments blanked and literals emptied, line numbers kept."""
    return _COMMENT_OR_LITERAL.sub(_blank, source)


def findings(name: str, source: str) -> list[str]:
    """`name:line: what: code` for every forbidden construct in one file."""
    out: list[str] = []
    original = source.splitlines()
    for lineno, line in enumerate(strip(source).splitlines(), 1):
        if line.lstrip().startswith("#"):  # preprocessor: #include <...> is not a comparison
            continue
        for what, pattern in _FORBIDDEN:
            if pattern.search(line):
                code = original[lineno - 1].strip()
                if (name, code) not in ALLOWED:
                    out.append(f"{name}:{lineno}: {what}: {code}")
                break
    return out


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted(
        p for p in BINDINGS.iterdir() if p.suffix in (".cc", ".h")
    )
    problems = [f for p in files for f in findings(p.name, p.read_text())]
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} line(s) of logic in csrc/bindings (see tools/check_bindings.py)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
