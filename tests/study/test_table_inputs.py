"""`mkd report --table` on tables a hostile or careless hand made: a column named twice, a
run twice (by name or by point and seeds), a byte-order mark, extra cells, numbers that are
not finite or overflow, an equivalence margin of infinity; each is one line naming the problem
(exit 2, no traceback, nothing written). A baseline whose loss is NaN (diverged) is left out of
the statistics with a note, in a table and in a sweep."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from megatron_kd.cli.main import main
from megatron_kd.study import sweep_dir
from megatron_kd.study.table import read_table, write_table
from tests.study.synthetic import sweep_rows
from tests.study.test_report_inputs import make_sweep, one_error

SETS = ["indomain", "ood"]


@pytest.fixture
def table(tmp_path):
    rows = sweep_rows(np.random.default_rng(3), teachers={"tiny@1": (0.36e6, 122880, 5.5),
                                                          "small@1": (1.3e6, 122880, 5.0)},
                      common={"data_seed": 7, "student_tokens": 614400})
    path = tmp_path / "results.csv"
    write_table(path, rows, SETS)
    return path


def lines_of(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def write_lines(path, lines, prefix: str = ""):
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write(prefix)
        csv.writer(f).writerows(lines)


def set_cell(path, row: int, col: str, value: str):
    lines = lines_of(path)
    lines[row + 1][lines[0].index(col)] = value
    write_lines(path, lines)


def refused(capsys, path, tmp_path, text, *extra):
    out = tmp_path / "r"
    one_error(capsys, main(["report", "--table", str(path), "--out", str(out), *extra]), text)
    assert not out.exists()  # nothing written, not even the directory


def test_duplicated_header_is_refused(table, capsys, tmp_path):
    lines = lines_of(table)
    i = lines[0].index("val/ood")
    for line in lines:
        line.append(line[i] if line is lines[0] else "9.0")  # a second val/ood the reader would take
    write_lines(table, lines)
    refused(capsys, table, tmp_path, "column(s) val/ood appear more than once in the header")


def test_repeated_point_and_seed_is_refused(table, capsys, tmp_path):
    lines = lines_of(table)
    copy = list(lines[1])
    copy[lines[0].index("run")] = "another-name"  # the same point and seeds under a new name
    write_lines(table, lines + [copy])
    refused(capsys, table, tmp_path, "are the same point")


def test_repeated_run_name_is_refused(table, capsys, tmp_path):
    lines = lines_of(table)
    write_lines(table, lines + [lines[1]])
    refused(capsys, table, tmp_path, "repeats row 2; one row per run")


def test_byte_order_mark_is_read_as_one(table, tmp_path):
    rows, sets = read_table(table)
    text = table.read_text(encoding="utf-8")
    table.write_bytes("\ufeff".encode() + text.encode())
    back, back_sets = read_table(table)
    assert back_sets == sets and [r.name for r in back] == [r.name for r in rows]


def test_extra_cells_are_refused(table, capsys, tmp_path):
    lines = lines_of(table)
    lines[3].append("4.0")
    write_lines(table, lines)
    refused(capsys, table, tmp_path, "row 4: ")


@pytest.mark.parametrize("col,value,text", [
    ("seed", "inf", "column seed: 'inf' is not a finite number"),
    ("student_tokens", "1e400", "column student_tokens: '1e400' is not a finite number"),
    ("top_k", "inf", "column top_k: 'inf' is not a finite number"),
    ("seed", "nan", "column seed: 'nan' is not a finite number"),
    ("seed", "1.5", "column seed: '1.5' is not a whole number"),
    ("student_params", "-3", "column student_params: '-3' is negative"),
    ("val/indomain", "1e308", "column val/indomain: '1e308' is not a loss"),
    ("val/ood", "inf", "column val/ood: 'inf' is not a loss"),
    ("teacher_val/indomain", "-1", "column teacher_val/indomain: '-1' is not a loss"),
    # the ranges `mkd fit` holds a row to (law.ROW_BOUNDS), so the two readers agree
    ("student_params", "0.5", "column student_params must be in [1, 1e+15]"),
    ("temperature", "1e29", "column temperature must be in (0, 1000000]"),
    ("data_seed", "1e29", "column data_seed must be in [0, 4294967295]"),
    ("teacher_pass_shared_by", "0", "column teacher_pass_shared_by must be in (0, 1000000000]"),
])
def test_numbers_are_checked_where_they_enter(table, col, value, text, capsys, tmp_path):
    set_cell(table, 4, col, value)
    refused(capsys, table, tmp_path, f"row 6 (run {lines_of(table)[5][0]!r}) {text}")


def test_all_losses_huge_is_one_line(table, capsys, tmp_path):
    lines = lines_of(table)
    for line in lines[1:]:
        for i, c in enumerate(lines[0]):
            if c.startswith(("val/", "teacher_val/")) and line[i]:
                line[i] = "1e308"
    write_lines(table, lines)
    refused(capsys, table, tmp_path, "is not a loss in nats/token")


@pytest.mark.parametrize("flag,value,text", [
    ("--equivalence", "inf", "--equivalence inf must be a finite number > 0"),
    ("--equivalence", "nan", "--equivalence nan must be a finite number > 0"),
    ("--level", "nan", "--level nan must be in [0.5, 1)"),
    ("--equivalence", "1e308", "--equivalence 1e+308 must be at most 10 nats"),
])
def test_options_are_checked_before_anything_is_written(table, flag, value, text, capsys, tmp_path):
    refused(capsys, table, tmp_path, text, flag, value)


def test_a_diverged_baseline_in_a_table_is_left_out_of_the_statistics(table, capsys, tmp_path):
    lines = lines_of(table)
    base = next(i for i, line in enumerate(lines) if line[0] == "base-1")
    lines[base][lines[0].index("val/indomain")] = "nan"
    write_lines(table, lines)
    assert main(["report", "--table", str(table), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Left out of the plots (a loss that is not finite): base-1." in md
    assert "left out of every statistic too" in md
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    assert doc["students"]["s"]["noise"]["indomain"]["sigma"] is not None
    # the report's own table writes the diverged loss back as nan, and reads it again
    again = {r.name: r for r in read_table(tmp_path / "r" / "report.csv")[0]}
    assert np.isnan(again["base-1"].val["indomain"])


def test_a_sweep_with_a_nan_baseline_of_two_reports(tmp_path, monkeypatch, capsys):
    """One of two baselines diverged (NaN validation loss): the report used to die in
    statistics.stdev; now that baseline is left out of the statistics, and said."""
    monkeypatch.setattr(sweep_dir, "resolve_teacher", lambda cfg, check=False: (None, cfg.model, {"tokens": 1000}))
    sweep = make_sweep(tmp_path / "s")
    points = json.loads((sweep / "points.json").read_text())
    points.append({"name": "b2", "student": "s", "teacher": None, "alpha": 0.0, "seed": 2})
    (sweep / "points.json").write_text(json.dumps(points))
    (sweep / "runs" / "b2").mkdir()
    (sweep / "recipes" / "b2.yaml").write_text((sweep / "recipes" / "b.yaml").read_text())
    (sweep / "runs" / "b2" / "metrics.jsonl").write_text(
        json.dumps({"step": 2, "tokens": 200, "val/mock": float("nan")}) + "\n")
    assert main(["report", str(sweep)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    md = (sweep / "report.md").read_text()
    assert "Baseline s: mock 4.0000" in md and "a loss that is not finite): b2." in md


def test_a_json_file_given_as_the_table_is_named(table, capsys, tmp_path):
    """report.json given for report.csv: "not a CSV results table", not a row's cell count."""
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"level": 0.95, "runs": [{"name": "a", "val": 3.0}]}, indent=1))
    refused(capsys, path, tmp_path, "JSON (it starts with { or [), not a CSV results table")
    path.write_text("\ufeff  [1, 2]\n")
    refused(capsys, path, tmp_path, "report.csv")
