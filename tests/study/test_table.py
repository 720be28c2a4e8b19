"""`mkd report --table`: the results table round-trips (the report of a table written from rows
equals the report of the rows), and a bad table is one line naming its row and column."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from megatron_kd.cli.main import main
from megatron_kd.study.report import write_report
from megatron_kd.study.table import read_table, write_table
from tests.study.synthetic import sweep_rows

SETS = ["indomain", "ood"]


@pytest.fixture
def table(tmp_path):
    rows = sweep_rows(np.random.default_rng(3), common={"data_seed": 7, "student_tokens": 614400})
    path = tmp_path / "results.csv"
    write_table(path, rows, SETS)
    return path, rows


def test_table_round_trip_gives_the_same_report(table, tmp_path):
    path, rows = table
    direct = write_report(rows, SETS, tmp_path / "direct", "t", 0.95, 0.01, None)["json"]
    back, sets = read_table(path)
    assert sets == SETS and len(back) == len(rows)
    rc = main(["report", "--table", str(path), "--out", str(tmp_path / "from_table")])
    assert rc == 0
    from_table = json.loads((tmp_path / "from_table" / "report.json").read_text())
    assert json.loads(json.dumps(direct, default=list)) == from_table
    # its own report.csv is the same table again
    again = list(csv.DictReader(open(tmp_path / "from_table" / "report.csv")))
    assert again == list(csv.DictReader(open(path)))


def _edit(path, row, col, value):
    lines = list(csv.DictReader(open(path)))
    head = list(lines[0].keys())
    if value is None:
        head.remove(col)
        for line in lines:
            line.pop(col)
    else:
        lines[row][col] = value
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=head)
        w.writeheader()
        w.writerows(lines)


@pytest.mark.parametrize("row,col,value,text", [
    (0, "seed", None, "missing column(s) seed"),
    (4, "val/indomain", "four", "row 6 (run "),
    (2, "run", "base-1", "repeats row 2"),
    (5, "alpha", "", "column alpha: empty for a KD run"),
])
def test_bad_table_is_one_line(table, row, col, value, text, capsys, tmp_path):
    path, _ = table
    _edit(path, row, col, value)
    rc = main(["report", "--table", str(path), "--out", str(tmp_path / "r")])
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert rc == 2 and len(err) == 1 and text in err[0], err


def test_sweep_dir_or_table_not_both(capsys, table):
    assert main(["report"]) == 2 and "give a sweep directory or --table" in capsys.readouterr().err


def test_the_v2_results_table_is_rebuilt_byte_for_byte_from_its_report(tmp_path):
    """scripts/study_results_table.py, the documented way docs/study/results.csv was made from
    docs/study/report.md, still makes exactly it."""
    import runpy
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    script = runpy.run_path(str(repo / "scripts" / "study_results_table.py"))
    script["main"](str(repo / "docs" / "study" / "report.md"), str(tmp_path / "results.csv"))
    assert (tmp_path / "results.csv").read_bytes() == (repo / "docs" / "study" / "results.csv").read_bytes()
