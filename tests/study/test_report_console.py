"""`mkd report` prints one screen — the headline, one line per claim, the compute answer and the
files written — and leaves the full report to report.md."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from megatron_kd.cli.main import main
from megatron_kd.study import compute_report, report_figures
from megatron_kd.study.report_summary import SCREEN_LINES
from megatron_kd.study.table import write_table
from tests.study.synthetic_v3 import SETS, v3_rows


@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
    """The console only (the figures have their own tests)."""
    monkeypatch.setattr(report_figures, "draw", lambda *a, **k: [])
    monkeypatch.setattr(compute_report, "plot", lambda *a, **k: [])


def _table(tmp_path, students=("s",)):
    rows = []
    for i, student in enumerate(students):
        for r in v3_rows(np.random.default_rng(i)):
            rows.append(replace(r, name=f"{student}-{r.name}", student=student,
                                student_tokens=r.baseline_tokens or 614400, data_seed=7))
    path = tmp_path / "results.csv"
    write_table(path, rows, list(SETS))
    return path


def test_the_console_shows_a_summary_and_names_report_md(tmp_path, capsys):
    assert main(["report", "--table", str(_table(tmp_path)), "--out", str(tmp_path / "r"), "--level", "0.9"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) <= SCREEN_LINES
    md = (tmp_path / "r" / "report.md").read_text()
    assert len(md.splitlines()) > 2 * SCREEN_LINES and "|---" not in out  # the tables stay in the file
    assert f"full report: {tmp_path / 'r' / 'report.md'}" in out
    assert "s: 18 KD points on indomain (90 % intervals):" in out
    for k in (1, 2, 3, 4):
        verdict = next(line for line in md.splitlines() if line.startswith(f"{k}. ")).split("**")[1]
        line = next(line for line in lines if line.startswith(f"  claim {k}, "))
        assert line.split(": ", 1)[1].split(" (")[0] == verdict
    assert "  compute (b, teacher exists, its pass serves this student alone): " in out
    assert "also written: report.json, report.csv" in out


def test_many_students_still_fit_one_screen(tmp_path, capsys):
    students = [f"s{i}" for i in range(4)]
    assert main(["report", "--table", str(_table(tmp_path, students)), "--out", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) <= SCREEN_LINES and "... and 1 more student (report.md)" in lines
