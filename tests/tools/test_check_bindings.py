"""tools/check_bindings.py: csrc/bindings holds no logic, and the check finds logic."""

from __future__ import annotations

from types import ModuleType

import pytest
from tests.script_module import ROOT, load_script


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return load_script(ROOT / "tools" / "check_bindings.py", "check_bindings")


def test_the_bindings_pass(check: ModuleType) -> None:
    assert check.main([]) == 0


def test_every_allowed_line_still_exists(check: ModuleType) -> None:
    # A stale allow-list entry would let the same line come back unnoticed elsewhere.
    texts = {p.name: p.read_text() for p in check.BINDINGS.iterdir()}
    for name, line in check.ALLOWED:
        assert line in texts[name], (name, line)


CONVERSION = """
m.def("f", [](Kernel& k, const std::optional<U64Array>& a) {
  std::span<const std::uint64_t> s;
  if (a) s = view(*a);  // a truth test converts an optional
  py::list out;
  for (const auto& x : k.items()) out.append(x);  // range-for converts element-wise
  std::string msg = "a + b; while (x) ? y : z";  // literals and comments are not code
  py::gil_scoped_release nogil;
  return check(k.call(s), "f");
}, py::arg("a") = 3);
"""


def test_conversion_passes(check: ModuleType) -> None:
    assert check.findings("bind_x.cc", CONVERSION) == []


@pytest.mark.parametrize(
    "line",
    [
        "for (std::size_t i = 0; i < n; i++) out.append(i);",
        "for (std::size_t i = 0; i != n; step(i)) out.append(i);",
        "while (more) step();",
        "do { step(); } while (more);",
        "switch (kind) { default: break; }",
        "return held ? a : b;",
        "if (n > 64) throw py::value_error(msg);",
        "if (rc != 0) throw py::value_error(msg);",
        "if (a.size() == b.size()) go();",
        "pages += b / page_size;",
        "return b / page_size - a / page_size + 1;",
        "++i;",
        "return x << 3;",
        "if (a && b) go();",
    ],
)
def test_logic_is_found(check: ModuleType, line: str) -> None:
    found = check.findings("bind_x.cc", f"void f() {{\n  {line}\n}}\n")
    assert len(found) == 1 and found[0].startswith("bind_x.cc:2:"), found


def test_an_allowed_line_passes_only_in_its_file(check: ModuleType) -> None:
    name, line = next(iter(check.ALLOWED))
    assert check.findings(name, line + "\n") == []
    assert check.findings("bind_other.cc", line + "\n") != []
