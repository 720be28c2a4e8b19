"""What `mkd report` writes is safe from what it reads: names that are spreadsheet formulas are
neutralised in report.csv (and read back as they were), names with line breaks or HTML are
escaped in report.md, a `$` in a name is drawn as a dollar sign; the report never writes over
its input nor over a file it did not write, while its own earlier report (a sweep's re-run)
is replaced; a table of many validation sets draws a stated few of them."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace

import numpy as np
import pytest

from megatron_kd.cli.main import main
from megatron_kd.study import sweep_dir
from megatron_kd.study.report_output import FIGURE_SETS, MANIFEST, md_text
from megatron_kd.study.rows import frozen_losses
from megatron_kd.study.table import FORMULA_START, read_table, write_table
from tests.study.synthetic import sweep_rows
from tests.study.test_report_inputs import make_sweep, one_error

SETS = ["indomain", "ood"]
FORMULAS = ['=HYPERLINK("http://evil.example","click")', "@SUM(1+1)*cmd|' /C calc'!A0", "+1+1", "-2+3",
            "'=already quoted", "''@twice"]


def rows_named(run_names=(), teacher=None, student="s", sets=SETS):
    rows = sweep_rows(np.random.default_rng(3), teachers={"tiny@1": (0.36e6, 122880, 5.5),
                                                          "small@1": (1.3e6, 122880, 5.0)}, sets=tuple(sets),
                      common={"data_seed": 7, "student_tokens": 614400, "student": student})
    names = list(run_names) + [r.name for r in rows[len(run_names):]]
    return [replace(r, name=name, teacher=teacher if teacher and r.teacher == "tiny@1" else r.teacher)
            for r, name in zip(rows, names)]


def test_formula_names_are_neutralised_and_read_back(tmp_path):
    rows = rows_named(FORMULAS, teacher="=cmd|' /C calc'!A0", student="@student")
    path = tmp_path / "t.csv"
    write_table(path, rows, SETS)
    with open(path, newline="") as f:
        cells = [c for line in list(csv.reader(f))[1:] for c in line]
    for c in cells:  # a cell starting with a formula character is a number, never text
        if c.startswith(FORMULA_START):
            float(c)
    back = read_table(path)[0]
    assert sorted(r.name for r in back) == sorted(r.name for r in rows)
    assert {r.teacher for r in back} == {r.teacher for r in rows}
    assert {r.student for r in back} == {"@student"}
    assert main(["report", "--table", str(path), "--out", str(tmp_path / "r")]) == 0
    again = read_table(tmp_path / "r" / "report.csv")[0]  # the report's own table, read back
    assert sorted(r.name for r in again) == sorted(r.name for r in rows)


def test_names_cannot_add_markdown_or_html(tmp_path, capsys):
    heading = "tiny\n## Claim 1 verdict: **holds**"
    rows = rows_named(["<img src=x onerror=alert(1)>", "x](javascript:alert(1))"], teacher=heading,
                      student="s|t\r\n# owned")
    path = tmp_path / "t.csv"
    write_table(path, rows, SETS)
    assert main(["report", "--table", str(path), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "<img" not in md and not re.search(r"(?<!\\)\]\(javascript", md)  # only an escaped \](
    assert not any(line.startswith(("## Claim", "# owned")) for line in md.splitlines())
    assert md_text(heading) in md and "\\*\\*holds\\*\\*" in md
    table_lines = [line for line in md.splitlines() if line.startswith("| ") and "onerror" in line]
    assert table_lines and all(line.count(" | ") == table_lines[0].count(" | ") for line in table_lines)


@pytest.mark.parametrize("value,shown", [("a\nb", "a b"), ("<b>", "&lt;b&gt;"), ("- item", "\\- item"),
                                         ("1. item", "1\\. item"), ("a|b", "a\\|b"), ("$x$", "\\$x\\$")])
def test_md_text(value, shown):
    assert md_text(value) == shown


def test_dollar_names_are_drawn_as_text(tmp_path):
    rows = rows_named(teacher="tiny$\\frac{$", student="tiny$\\frac{$")
    path = tmp_path / "t.csv"
    write_table(path, rows, SETS)
    assert main(["report", "--table", str(path), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "gain_vs_teacher_tokens.png").is_file()


def test_many_sets_draw_a_stated_few(tmp_path):
    sets = ["indomain"] + [f"ood{i}" for i in range(FIGURE_SETS + 2)]
    rows = rows_named(sets=["indomain", "ood"])
    copied = lambda losses: frozen_losses({**losses, **{s: losses["ood"] for s in sets[1:]}} if losses else {})  # noqa: E731
    rows = [replace(r, val=copied(r.val), teacher_val=copied(r.teacher_val)) for r in rows]  # each extra set: ood's
    path = tmp_path / "t.csv"
    write_table(path, rows, sets)
    assert main(["report", "--table", str(path), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"The figures draw {FIGURE_SETS} of the {len(sets)} validation sets (the in-domain set, then" in md
    assert len(json.loads((tmp_path / "r" / "report.json").read_text())["ood"]) == len(sets) - 1


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "t.csv"
    write_table(path, rows_named(), SETS)
    return path


def test_never_writes_over_its_input(table, tmp_path, capsys):
    out = tmp_path / "dir"
    out.mkdir()
    disguised = out / "report.json"  # a CSV table under a name the report writes
    disguised.write_bytes(table.read_bytes())
    for extra in ([], ["--overwrite"]):
        one_error(capsys, main(["report", "--table", str(disguised), "--out", str(out), *extra]),
                  "over its input")
        assert disguised.read_bytes() == table.read_bytes() and sorted(p.name for p in out.iterdir()) == \
            ["report.json"]


def test_foreign_files_are_refused_own_ones_replaced(table, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    cmd = ["report", "--table", str(table), "--out", str(out)]
    one_error(capsys, main(cmd), "report.md exists and was not written by `mkd report`")
    assert (out / "report.md").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == ["report.md"]
    assert main([*cmd, "--overwrite"]) == 0
    assert main(cmd) == 0  # a re-run replaces the report's own files
    assert "report.md" in json.loads((out / MANIFEST).read_text())["files"]
    (out / "report.csv").write_text("edited by hand")
    one_error(capsys, main(cmd), "report.csv exists and was not written by `mkd report` (or was changed since)")
    assert (out / "report.csv").read_text() == "edited by hand"


def test_a_sweep_report_is_rewritten_on_a_rerun(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep_dir, "resolve_teacher", lambda cfg, check=False: (None, cfg.model, {"tokens": 1000}))
    sweep = make_sweep(tmp_path / "s")
    (sweep / "report.md").write_text("# Sweep report: s\n(an earlier version's, before the manifest)")
    assert main(["report", str(sweep)]) == 0  # a sweep's own report, from before the manifest
    assert main(["report", str(sweep)]) == 0  # and again, through the manifest
    (sweep / "loss_curves.png").write_bytes(b"not ours")
    one_error(capsys, main(["report", str(sweep)]), "loss_curves.png exists and was not written")


def test_a_table_report_from_before_the_manifest_is_replaced(table, tmp_path):
    """(docs/STUDY.md's `mkd report --table docs/study/results.csv --out docs/study/corrected` is
    re-run over a report written before the manifest existed.)"""
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.md").write_text("# Report: t.csv\n\nan earlier version's")
    (out / "report.csv").write_text("an earlier version's table")
    assert main(["report", "--table", str(table), "--out", str(out)]) == 0
    assert (out / MANIFEST).is_file() and read_table(out / "report.csv")[0]
