"""`fastmap bench`: option validation, the JSON file, the plot, table width, progress.

Tiny runs on the simulated kernel; nothing here times anything (the numbers are only
checked for being consistent with each other).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

import fastmap
from fastmap._tools import bench_cli
from fastmap._tools.bench_dirty import GiB, MiB, harvest_rows
from fastmap._tools.bench_progress import Progress
from fastmap._tools.bench_table import WIDTH, Column, Table, render, text_table
from fastmap.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bench(*args: str) -> list[str]:
    return ["--kernel", "sim", "bench", *args]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--entries", "0"),
        ("--entries", "-1"),
        ("--entries", "1.5"),
        ("--entries", "many"),
        ("--seconds", "0"),
        ("--seconds", "-2"),
        ("--seconds", "nan"),
        ("--seconds", "inf"),
        ("--repeat", "0"),
        ("--repeat", "-3"),
        ("--threads", "0"),
    ],
)
def test_bad_values_are_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(_bench("map", f"{option}={value}"))
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("fastmap bench: error: argument ") and option in last
    assert "Traceback" not in err and "nan" not in err.replace(value, "")


def test_scale_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(_bench("map", "--scale", "0.1"))
    assert "unrecognized arguments: --scale" in capsys.readouterr().err


def _lines_fit(text: str) -> None:
    wide = [ln for ln in text.splitlines() if len(ln) > WIDTH]
    assert not wide, wide


def test_map_json_has_environment_and_every_row_with_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    assert main(_bench("map", "--entries", "64", "--repeat", "1", "--json", str(out))) == 0
    text = capsys.readouterr().out
    _lines_fit(text)
    doc = json.loads(out.read_text())
    assert doc["fastmap_version"] == fastmap.__version__
    assert doc["kernel"]["name"] == "sim" and doc["kernel"]["version"] >= 612
    assert doc["machine"]["cpus"] >= 1 and doc["machine"]["arch"]
    assert doc["options"] == {"entries": 64, "seconds": None, "repeat": 1, "threads": 2}
    tables = {t["bench"]: t for t in doc["tables"]}
    assert set(tables) == {"map", "lifecycle"}
    for t in tables.values():
        for row in t["rows"]:
            assert set(row) <= set(t["units"]), (t["bench"], row)
    rows = tables["map"]["rows"]
    assert {r["method"] for r in rows} == {"naive", "single", "batch", "batch-parallel", "floor"}
    assert {r["size"] for r in rows} == {"4KiB", "2MiB", "1GiB"}
    assert tables["map"]["units"]["seconds"] == "s"
    assert tables["map"]["units"]["maps_per_s"] == "maps/s"
    for r in rows:
        assert r["entries"] == 64 and r["seconds"] > 0
        assert r["maps_per_s"] == pytest.approx(64 / r["seconds"])
        if r["method"] == "floor":
            assert r["over_floor"] == pytest.approx(1.0)
    # The text table shows the same rows.
    assert text.count("    64  ") >= 15


def test_dirty_beyond_one_ioas_splits_instead_of_einval() -> None:
    # 1 GiB + 2 MiB does not fit the mock's aperture in one IOAS (it gave EINVAL).
    rows = harvest_rows(pages=(GiB + 2 * MiB) // 4096, repeat=1)
    multi = [r for r in rows if "IOASes" in r.group]
    assert "2 IOASes x 1GiB" in multi[0].group
    assert multi[-1].guest_bytes == 2 * GiB


def test_pinned_rows_with_a_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.json"
    argv = _bench("pinned", "--entries", "8", "--repeat", "1", "--page-size", "4KiB")
    assert main([*argv, "--page-size", "2MiB", "--json", str(out)]) == 0
    _lines_fit(capsys.readouterr().out)
    (t,) = json.loads(out.read_text())["tables"]
    assert [(r["page"], r["method"]) for r in t["rows"]] == [
        (p, m) for p in ("4KiB", "2MiB") for m in ("naive", "batch", "batch-threads", "floor")
    ]
    for r in t["rows"]:
        assert r["backing"] in ("anon", "anon+THP", "hugetlb")
        assert (r["fallback"] == "") == (r["backing"] != "anon+THP")
        assert r["gib_per_s"] == pytest.approx(8 * r["length"] / GiB / r["seconds"])


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "b.png"
    argv = _bench("batch", "--entries", "16", "--repeat", "1", "--plot", str(png))
    assert main(argv) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_plot_of_dirty_panels(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from fastmap._tools import bench_plot

    args = bench_cli_args("dirty", entries=4096)
    tables = bench_cli.bench_dirty(fastmap.open_kernel("sim"), args, lambda s: None)
    png = tmp_path / "d.png"
    assert bench_plot.plot(tables, "sim", str(png)) == 3
    assert png.read_bytes()[:8] == PNG_MAGIC
    _lines_fit(render(tables[0]))


def test_plot_refused_up_front_for_a_bench_without_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "a.png"
    assert main(_bench("alloc", "--entries", "10", "--plot", str(png))) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "no figure" in err
    assert not png.exists()


def bench_cli_args(which: str, **kw: Any) -> Any:
    import argparse

    p = argparse.ArgumentParser()
    bench_cli.add_arguments(p)
    args = p.parse_args([which, "--repeat", "1"])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_text_tables_wrap_to_100_columns() -> None:
    long = "a rather long note that explains a figure at length " * 4
    t = Table(
        "x",
        "title " * 30,
        [Column("case"), Column("seconds", "s", "ms", lambda v: f"{v * 1e3:.2f}"), Column("note")],
        [{"case": "fastmap.bitmap.to_ranges", "seconds": 0.5, "note": long}],
        ["note " * 40],
    )
    text = render(t)
    _lines_fit(text)
    assert "500.00" in text and "fastmap.bitmap.to_ranges" in text
    assert " ".join(text.split()).count("explains a figure") == 4  # wrapped, not cut
    narrow = text_table(["a", "b"], [["1", "2"]])
    assert narrow.splitlines() == ["a  b", "-  -", "1  2"]


def test_progress_only_when_enabled() -> None:
    tty_off = io.StringIO()
    Progress(None, tty_off, after=0)("step")  # a StringIO is no terminal
    assert tty_off.getvalue() == ""
    on = io.StringIO()
    p = Progress(True, on, after=0)
    p("map 4KiB: batch, round 1/3")
    p.done()
    assert "map 4KiB: batch, round 1/3" in on.getvalue()
    assert on.getvalue().endswith("\r") and all(len(x) <= WIDTH for x in on.getvalue().split("\r"))
    late = io.StringIO()
    Progress(True, late, after=3600)("too early")
    assert late.getvalue() == ""


def test_report_renders_both_kernels_side_by_side(tmp_path: Path) -> None:
    from fastmap._tools import bench_report

    for kind in ("sim", "real"):  # both from the simulator here: the renderer is under test
        (tmp_path / kind).mkdir()
        for page in ("2MiB", "4KiB"):  # one run per page size, as tools/bench-report.sh does
            argv = _bench("pinned", "--entries", "2", "--repeat", "1", "--page-size", page)
            assert main([*argv, "--json", str(tmp_path / kind / f"p{page}.json")]) == 0
    text = bench_report.render_report(
        bench_report.load(tmp_path / "sim"), bench_report.load(tmp_path / "real"), {}
    )
    head = next(ln for ln in text.splitlines() if ln.startswith("| page | method"))
    assert "sim maps/s" in head and "real maps/s" in head
    rows = [ln for ln in text.splitlines() if ln.startswith(("| 4KiB |", "| 2MiB |"))]
    methods = ["naive", "batch", "batch-threads", "floor"]
    assert [r.split(" | ")[:2] for r in rows] == [
        [f"| {p}", m] for p in ("4KiB", "2MiB") for m in methods
    ]
    assert all(r.count(" | ") == 11 and " - |" not in r for r in rows)
    cmd = "fastmap --kernel sim|real bench pinned --entries 2 --repeat 1 --threads 2 --page-size"
    assert f"{cmd} 4KiB" in text and f"{cmd} 2MiB" in text
    assert "GENERATED" in text and "simulated Linux" in text
