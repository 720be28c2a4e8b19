"""The registered kd.auto test (study/auto_test.py) on synthetic sweeps with planted effects:
auto equal to each teacher's best grid point matches the grid; auto 0.1 nats worse for one teacher
does not hold; a small shortfall in noise too large to call is inconclusive. The verdict's logic
on rows given directly, the margin's floor and MDE, and the report's and power's outputs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from megatron_kd.errors import ConfigError
from megatron_kd.study import analysis, auto_test, compute, report_auto
from megatron_kd.study.primary import parse_auto, parse_primary, registered
from megatron_kd.study.report_summary import SCREEN_LINES, summary_lines
from tests.study.synthetic import TEACHERS, sweep_rows

SETS = ["indomain", "ood_dev", "ood_test"]
THREE = dict(list(TEACHERS.items())[:3])


def _test(auto, noise=0.003, seed=5, entry=None):
    rows = sweep_rows(np.random.default_rng(seed), effect=lambda t, a, s: 0.02 * a, seeds=(1, 2, 3, 4),
                      noise=noise, teachers=THREE, sets=tuple(SETS), auto=auto)
    with registered({"auto": entry} if entry else None):
        return analysis.analyse(rows, SETS, n_boot=0)["students"]["s"]["auto"]


def test_auto_equal_to_the_best_grid_point_matches_the_grid():
    a = _test(lambda t, s: 0.02)  # the best fixed α (1.0) gains 0.02; so does auto
    assert a["verdict"] == "auto matches the grid"
    assert [r["reference_alpha"] for r in a["teachers"]] == [1.0, 1.0, 1.0]
    assert all(r["not_worse"] and r["margin"] == 0.01 and abs(r["d"]) < 0.005 for r in a["teachers"])
    assert set(a["teachers"][0]["secondary"]) == {"ood_test"}  # the dev twin chooses, reads nothing


def test_auto_a_tenth_worse_for_one_teacher_does_not_hold():
    worse = list(THREE)[1]
    a = _test(lambda t, s: 0.02 - (0.1 if t == worse else 0.0))
    assert a["verdict"] == "does not hold"
    bad = [r for r in a["teachers"] if not r["not_worse"]]
    assert [r["teacher"] for r in bad] == [worse] and 0.09 < bad[0]["d"] < 0.11 and bad[0]["p_worse_holm"] < 0.05


def test_a_small_shortfall_in_large_noise_is_inconclusive():
    a = _test(lambda t, s: 0.0, noise=0.03, seed=3)  # auto gains nothing, the grid's best 0.02: within noise
    assert a["verdict"] == "inconclusive"
    assert all(r["margin"] > 0.04 for r in a["teachers"])  # the margin is the MDE at this noise, not 0.01
    assert not all(r["not_worse"] for r in a["teachers"])
    assert all(r["p_worse_holm"] >= 0.05 for r in a["teachers"])


def test_a_teacher_that_cannot_help_is_referenced_to_alpha_zero():
    rows = sweep_rows(np.random.default_rng(5), effect=lambda t, a, s: -0.05 * a, seeds=(1, 2, 3, 4), noise=0.003,
                      teachers=THREE, sets=tuple(SETS), auto=lambda t, s: 0.0)  # every α hurts; auto switches off
    a = analysis.analyse(rows, SETS, n_boot=0)["students"]["s"]["auto"]
    assert [r["reference_alpha"] for r in a["teachers"]] == [0.0, 0.0, 0.0]
    assert a["verdict"] == "auto matches the grid"


def _row(not_worse, p_holm, d=0.01):
    return {"not_worse": not_worse, "p_worse_holm": p_holm, "d": d}


@pytest.mark.parametrize("rows, said", [
    ([_row(True, 0.5), _row(True, 0.9)], "auto matches the grid"),
    ([_row(True, 0.5), _row(False, 0.04)], "does not hold"),
    ([_row(True, 0.5), _row(False, 0.06)], "inconclusive"),
    ([_row(True, 0.5), _row(False, None)], "inconclusive"),  # no noise estimate
    ([], "inconclusive"),
])
def test_the_verdict_is_an_intersection_union_of_the_teachers(rows, said):
    assert auto_test.verdict(rows) == said


def test_the_margin_is_the_floor_or_the_mde():
    assert auto_test.mde(0.0113, 90) == pytest.approx(0.028, abs=5e-4)  # docs/STUDY.md's registered value
    a = _test(lambda t, s: 0.02, entry={"set": "indomain", "margin": 0.05})
    assert a["registered"] and all(r["margin"] == 0.05 for r in a["teachers"])


@pytest.mark.parametrize("entry, said", [
    ({"set": "indomain"}, "`primary.auto` must be a mapping {set: SET, margin: NATS}"),
    ({"set": "indomain", "margin": 0}, "`primary.auto` must be"),
    ({"set": "indomain", "margin": 0.01, "teachers": "weak"}, "`primary.auto` must be"),
])
def test_a_bad_auto_entry_is_one_line(entry, said):
    with pytest.raises(ConfigError, match=said.replace("{", r"\{").replace("}", r"\}")):
        parse_primary({"auto": entry}, "sweep x")
    assert parse_auto({"claim 3": {"set": "ood_test"}}, "x") is None


def test_an_unknown_auto_set_is_one_line():
    with pytest.raises(ConfigError, match="primary.auto's set 'wisdom' is not a validation set of these runs"):
        _test(lambda t, s: 0.02, entry={"set": "wisdom", "margin": 0.01})


def test_the_report_section_and_console_line():
    rows = sweep_rows(np.random.default_rng(5), effect=lambda t, a, s: 0.02 * a, seeds=(1, 2, 3, 4), noise=0.003,
                      teachers=THREE, sets=tuple(SETS), auto=lambda t, s: 0.02)
    study = analysis.analyse(rows, SETS, n_boot=0)
    md = report_auto.markdown(study)
    assert "**Verdict: auto matches the grid.**" in md and len([x for x in md if x.startswith("| micro")]) == 1
    line = report_auto.summary_line(study["students"]["s"])
    assert line == "  kd.auto against the grid: auto matches the grid (3 of 3 teachers not worse, margin 0.010)"
    doc = report_auto.report_json(study["students"]["s"])
    assert doc["verdict"] == "auto matches the grid" and len(doc["teachers"]) == 3 and "key" not in doc["teachers"][0]


def test_the_console_summary_of_four_students_with_auto_points_fits_one_screen(tmp_path):
    rows = []
    for i in range(4):
        for r in sweep_rows(np.random.default_rng(i), effect=lambda t, a, s: 0.02 * a, seeds=(1, 2, 3, 4),
                            noise=0.003, teachers=THREE, sets=tuple(SETS), auto=lambda t, s: 0.02):
            rows.append(replace(r, name=f"s{i}-{r.name}", student=f"s{i}", student_tokens=614400, data_seed=7))
    study = analysis.analyse(rows, SETS, n_boot=0)
    rep = {"study": study, "out_dir": tmp_path, "title": "t", "rows": rows, "plots": [],
           "compute": compute.compute_study(rows, study, SETS, 0.95)}
    lines = summary_lines(rep)
    assert len(lines) <= SCREEN_LINES and lines.count(report_auto.summary_line(study["students"]["s0"])) >= 2
    assert lines[-3].startswith("... and ") and lines[-3].endswith(" more students (report.md)")
