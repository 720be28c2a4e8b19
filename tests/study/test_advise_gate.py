"""`mkd advise` prices a distilled option only from a law whose leave-one-cell-out error beats
ignoring the teacher; otherwise one line says so and the sweep's measured gains (kept in
law.json) are shown instead. law.json's keys for it (form, cv, gains) are schema-checked."""

from __future__ import annotations

import json

import pytest

from megatron_kd.study.advise import Law, advise
from tests.helpers import mkd_in_process
from tests.study.law_data import write_fitted_law

ADVISE = ("--flops", 6e13, "--student", 1e6, "--teacher", 3e6, 2.65)


@pytest.fixture(scope="module")
def law_file(tmp_path_factory):
    return write_fitted_law(tmp_path_factory.mktemp("gate") / "law.json")


def _edited(law_file, tmp_path, edit) -> str:
    law = json.loads(law_file.read_text())
    edit(law)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(law))
    return path


def _no_better_than_ignoring(law):
    cv = law["distillation"]["1.0"]["cv"]
    cv["law_rmse_log"] = cv["no_effect_rmse_log"] * 1.01


def test_a_law_that_beats_no_effect_is_priced(law_file, capsys):
    rc, out, err = mkd_in_process(capsys, "advise", law_file, *ADVISE)
    assert rc == 0 and "recommendation (distil)" in out and "not priced" not in out, err


def test_a_law_that_does_not_beat_no_effect_prices_nothing_and_shows_the_gains(law_file, tmp_path, capsys):
    path = _edited(law_file, tmp_path, _no_better_than_ignoring)
    rc, out, err = mkd_in_process(capsys, "advise", path, *ADVISE)
    assert rc == 0, err
    said = [line for line in out.splitlines() if "is not priced" in line]
    assert len(said) == 1 and "does not beat ignoring the teacher" in said[0], out
    assert "distil at" not in out and "recommendation (supervised wins)" in out
    gains = [line for line in out.splitlines() if line.strip().startswith("measured at N=")]
    assert len(gains) == 6 and all(line.count("(teacher ") == 5 for line in gains), out  # 3 sizes x 2 budgets
    law = Law.load(path)
    assert not law.mixes and 1.0 in law.unpriced and len(law.gains) == 30


def test_a_mix_without_a_law_is_said_in_one_line_with_the_gains(law_file, tmp_path, capsys):
    path = _edited(law_file, tmp_path, lambda law: law["distillation"].update({"1.0": "2 runs from 1 teacher(s)"}))
    rc, out, err = mkd_in_process(capsys, "advise", path, *ADVISE)
    assert rc == 0 and "distil at" not in out, err
    said = [line for line in out.splitlines() if "is not priced" in line]
    assert len(said) == 1 and "no law was fitted to it (2 runs from 1 teacher(s))" in said[0], out
    assert sum(line.strip().startswith("measured at N=") for line in out.splitlines()) == 6


def test_intervals_widen_by_the_cross_validated_error(law_file, tmp_path):
    wide = _edited(law_file, tmp_path, lambda law: law["distillation"]["1.0"]["cv"].update(law_rmse_log=0.005))
    narrow, widened = (advise(Law.load(p), 6e13, [1e6], teacher=(3e6, 2.65))[0] for p in (law_file, wide))
    a, b = (next(o for o in opts if o.kind == "existing teacher") for opts in (narrow, widened))
    assert a.loss == b.loss and b.interval[1] - b.interval[0] > a.interval[1] - a.interval[0]


EDITS = [
    ("form unknown", lambda law: law["distillation"]["1.0"].update(form="cubic"), "distillation.1.0.form is 'cubic'"),
    ("form missing", lambda law: law["distillation"]["1.0"].pop("form"), "distillation.1.0.form is 'None'"),
    ("cv missing", lambda law: law["distillation"]["1.0"].pop("cv"), "distillation.1.0.cv is missing"),
    ("cv NaN", lambda law: law["distillation"]["1.0"]["cv"].update(law_rmse_log=float("nan")),
     "distillation.1.0.cv.law_rmse_log is not a number"),
    ("cv negative", lambda law: law["distillation"]["1.0"]["cv"].update(no_effect_rmse_log=-1),
     "distillation.1.0.cv.no_effect_rmse_log must be in [0, 10]"),
    ("gains a list", lambda law: law.update(gains=[1, 2]), "gains is not a table"),
    ("gains row short", lambda law: law["gains"]["rows"].__setitem__(0, [1.0]), "gains.rows[0] is not a row"),
    ("gains NaN", lambda law: law["gains"]["rows"][0].__setitem__(4, float("nan")), "gains.rows[0] is not a number"),
    ("supervised cv NaN", lambda law: law["supervised"]["cv"].update(law_rmse_log=float("inf")),
     "supervised.cv.law_rmse_log is inf"),
]


@pytest.mark.parametrize("edit,names", [(e, n) for _, e, n in EDITS], ids=[i for i, _, _ in EDITS])
def test_a_hand_edited_gate_key_is_one_line(law_file, tmp_path, capsys, edit, names):
    path = _edited(law_file, tmp_path, edit)
    rc, out, err = mkd_in_process(capsys, "advise", path, *ADVISE)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (rc, out, err)
    assert names in err and "mkd fit" in err, err
