"""`mkd advise`'s inputs: every flag finite and in range where it enters (a NaN, an infinity,
a negative or a product past any real budget is one line, never a NaN or "inf tokens"
recommendation), and law.json checked against its schema where it is read (a hand edit or a
damaged file is one line naming the key and saying to re-run `mkd fit`, never a traceback)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import mkd_in_process
from tests.study.law_data import write_fitted_law


@pytest.fixture(scope="module")
def law_file(tmp_path_factory):
    return write_fitted_law(tmp_path_factory.mktemp("law") / "law.json")


def _refused(capsys, *args) -> str:
    rc, out, err = mkd_in_process(capsys, "advise", *args)
    assert rc == 2 and "Traceback" not in err, (rc, out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert "nan" not in out.lower() and "inf" not in out.lower(), out
    return err


BAD_FLAGS = [
    (["--flops", "nan"], "--flops is not a number"),
    (["--flops", "nan", "--extrapolate"], "--flops is not a number"),
    (["--flops", "inf", "--extrapolate"], "--flops is inf (not a finite number)"),
    (["--flops=-inf"], "--flops is -inf"),
    (["--flops=-1e15"], "--flops must be in (0, 1e+40]"),
    (["--flops", "0"], "--flops must be in (0, 1e+40]"),
    (["--flops", "1e300", "--extrapolate"], "--flops must be in (0, 1e+40]"),
    (["--gpu-hours", "1e300", "--throughput", "1e300"], "beyond any real budget"),
    (["--gpu-hours", "1e300", "--throughput", "1e300", "--extrapolate"], "beyond any real budget"),
    (["--gpu-hours", "nan", "--throughput", "4e14"], "--gpu-hours is not a number"),
    (["--gpu-hours", "10", "--throughput", "nan"], "--throughput is not a number"),
    (["--gpu-hours", "10", "--throughput=-4e14"], "--throughput must be > 0"),
    (["--gpu-hours", "10"], "--gpu-hours needs --throughput"),
    (["--flops", "6e13", "--student", "nan"], "--student is not a number"),
    (["--flops", "6e13", "--student", "inf", "--extrapolate"], "--student is inf"),
    (["--flops", "6e13", "--student=-1e6"], "--student must be in (0, 1e+15]"),
    (["--flops", "6e13", "--student", "1e300", "--extrapolate"], "--student must be in (0, 1e+15]"),
    (["--flops", "6e13", "--teacher", "nan", "2.65"], "--teacher N_T is not a number"),
    (["--flops", "6e13", "--teacher", "3e6", "nan"], "--teacher LOSS is not a number"),
    (["--flops", "6e13", "--teacher", "3e6", "inf", "--extrapolate"], "--teacher LOSS is inf"),
    (["--flops", "6e13", "--teacher", "3e6", "-1"], "--teacher LOSS must be in (0, 1000000]"),
    (["--flops", "6e13", "--students", "0"], "--students must be in [1, 1000000000]"),
    (["--flops", "6e13", "--students", str(10**30)], "--students must be in [1, 1000000000]"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_a_flag_out_of_range_is_one_line(law_file, capsys, flags, message):
    assert message in _refused(capsys, law_file, *flags)


def test_an_infinite_budget_writes_no_recipes(law_file, tmp_path, capsys):
    err = _refused(capsys, law_file, "--flops", "inf", "--extrapolate", "--student-recipe", "models/cpu-small",
                   "--base", "kd/_cpu_base", "--write-recipes", tmp_path / "r")
    assert "--flops is inf" in err and not (tmp_path / "r").exists()


def test_a_budget_inside_the_law_still_advises(law_file, capsys):
    rc, out, err = mkd_in_process(capsys, "advise", law_file, "--flops", 6e13, "--student", 1e6,
                                  "--teacher", 3e6, 2.65)
    assert rc == 0 and out.splitlines()[-1].startswith("recommendation (distil)"), err


def _set(path: list, value):
    """A hand edit: law[path...] = value (a `None` path member appends nothing: see usage)."""
    def edit(law):
        d = law
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
        return law
    return edit


def _drop(path: list):
    def edit(law):
        d = law
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
        return law
    return edit


# (id, edit of the parsed law.json, the key the one line names)
EDITS = [
    ("top level a list", lambda law: [law], "a JSON list"),
    ("top level a string", lambda law: "law", "a JSON str"),
    ("no format", _drop(["format"]), "format 'None'"),
    ("E NaN", _set(["supervised", "params", "E"], float("nan")), "supervised.params.E is not a number"),
    ("E infinite", _set(["supervised", "params", "E"], float("inf")), "supervised.params.E is inf"),
    ("E missing", _drop(["supervised", "params", "E"]), "supervised.params.E is missing"),
    ("E a string", _set(["supervised", "params", "E"], "1.8"), "supervised.params.E: '1.8' is not a number"),
    ("E negative", _set(["supervised", "params", "E"], -1.0), "supervised.params.E must be in (0, 1000000]"),
    ("gamma a string", _set(["supervised", "params", "gamma"], "x"), "supervised.params.gamma"),
    ("gamma zero", _set(["supervised", "params", "gamma"], 0), "supervised.params.gamma must be > 0"),
    ("alpha negative", _set(["supervised", "params", "alpha"], -0.3), "supervised.params.alpha must be >= 0"),
    ("params a list", _set(["supervised", "params"], [1, 2]), "supervised.params is a list"),
    ("supervised a string", _set(["supervised"], "x"), "supervised is a str, not a mapping"),
    ("supervised missing", _drop(["supervised"]), "supervised is missing"),
    ("samples a string", _set(["supervised", "samples"], "x"), "supervised.samples is a str"),
    ("a sample a number", _set(["supervised", "samples", 0], 3), "supervised.samples[0] is a int"),
    ("a sample short", _set(["supervised", "samples", 1], {"E": 1.0}), "supervised.samples[1].A is missing"),
    ("a sample NaN", _set(["supervised", "samples", 2, "B"], float("nan")), "supervised.samples[2].B"),
    ("fixed a list", _set(["supervised", "fixed"], []), "supervised.fixed is not a mapping"),
    ("ranges missing", _drop(["ranges"]), "ranges is missing"),
    ("ranges a string", _set(["ranges"], "x"), "ranges is a str"),
    ("ranges.N a string", _set(["ranges", "N"], "1e5-3e6"), "ranges.N is not a [low, high] pair"),
    ("ranges.N one number", _set(["ranges", "N"], [1e5]), "ranges.N is not a [low, high] pair"),
    ("ranges.N reversed", _set(["ranges", "N"], [3e6, 1e5]), "ranges.N has low 3e+06 above high 100000"),
    ("ranges.N NaN", _set(["ranges", "N"], [float("nan"), 3e6]), "ranges.N is not a number"),
    ("ranges.D missing", _drop(["ranges", "D"]), "ranges.D is missing"),
    ("ranges.D zero", _set(["ranges", "D"], [0, 3e7]), "ranges.D must be in (0, 1e+18]"),
    ("teacher losses null", _set(["ranges", "teacher_loss"], None), "ranges.teacher_loss is missing"),
    ("distillation a list", _set(["distillation"], []), "distillation is a list"),
    ("a mix not a number", _set(["distillation", "one"], {}), "distillation.one is not a KD mix"),
    ("a mix of 5", _set(["distillation", "5.0"], "reason"), "distillation.5.0 is a KD mix α outside [0, 1]"),
    ("a mix a number", _set(["distillation", "1.0"], 3), "distillation.1.0 is a int"),
    ("c1 negative", _set(["distillation", "1.0", "params", "c1"], -3.0), "distillation.1.0.params.c1 must be > 0"),
    ("c0 NaN", _set(["distillation", "1.0", "params", "c0"], float("nan")), "distillation.1.0.params.c0"),
    ("mix samples a string", _set(["distillation", "1.0", "samples"], "x"), "distillation.1.0.samples is a str"),
    ("parameters unknown", _set(["parameters"], "all"), "parameters is 'all'"),
]


@pytest.mark.parametrize("edit,names", [(e, n) for _, e, n in EDITS], ids=[i for i, _, _ in EDITS])
def test_a_hand_edited_law_is_one_line_naming_the_key(law_file, tmp_path, capsys, edit, names):
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(edit(json.loads(law_file.read_text()))))  # NaN/Infinity as JSON writes them
    err = _refused(capsys, edited, "--flops", 6e13, "--student", 1e6, "--teacher", 3e6, 2.65)
    assert names in err, err
    assert "mkd fit" in err


def test_a_number_past_a_float_in_law_json_is_one_line(law_file, tmp_path, capsys):
    text = law_file.read_text()
    law = json.loads(text)
    edited = tmp_path / "huge.json"
    edited.write_text(text.replace(json.dumps(law["supervised"]["params"]["E"]), "1e400", 1))
    assert "supervised.params.E is inf" in _refused(capsys, edited, "--flops", 6e13)


def test_a_law_that_overflows_everywhere_recommends_nothing(law_file, tmp_path, capsys):
    """Finite parameters whose prediction overflows (a huge exponent): no option, not a NaN or an
    inf recommendation."""
    law = json.loads(law_file.read_text())
    for p in [law["supervised"]["params"], *law["supervised"]["samples"]]:
        p.update(B=1e10, gamma=1e3)
    edited = tmp_path / "overflow.json"
    edited.write_text(json.dumps(law))
    assert "predicts no finite loss" in _refused(capsys, edited, "--flops", 6e13, "--student", 1e6)


def test_a_loss_past_any_measurement_is_refused(law_file, tmp_path, capsys):
    """E = 1e308 (a law key) or a teacher loss of 1e308 is not a loss: one line, never a
    recommendation of "loss 1000...0"."""
    law = json.loads(law_file.read_text())
    law["supervised"]["params"]["E"] = 1e308
    edited = tmp_path / "e_huge.json"
    edited.write_text(json.dumps(law))
    assert "supervised.params.E must be in (0, 1000000]" in _refused(capsys, edited, "--flops", 1e14,
                                                                       "--extrapolate")
    err = _refused(capsys, law_file, "--flops", 1e14, "--teacher", 1e6, 1e308)
    assert "--teacher LOSS must be in (0, 1000000]" in err


def test_a_predicted_loss_past_any_measurement_is_left_out(law_file, tmp_path, capsys):
    """Finite parameters whose prediction is finite but past 1e6 nats: no option either."""
    law = json.loads(law_file.read_text())
    for p in [law["supervised"]["params"], *law["supervised"]["samples"]]:
        p.update(A=1e300, alpha=0.0)
    edited = tmp_path / "huge_a.json"
    edited.write_text(json.dumps(law))
    assert "predicts no finite loss" in _refused(capsys, edited, "--flops", 6e13, "--student", 1e6)


def test_write_recipes_names_every_recipe_in_the_order_to_run(law_file, tmp_path, capsys):
    """What --write-recipes prints names each file it wrote, as the `mkd train` command that runs it:
    one recipe alone, or the teacher's before the KD run that reads its directory."""
    common = ["--student-recipe", "models/cpu-small", "--teacher-recipe", "models/cpu-medium",
              "--base", "kd/_cpu_base", "--extrapolate"]
    one = tmp_path / "one dir"
    rc, out, err = mkd_in_process(capsys, "advise", law_file, "--flops", 1e15, *common, "--write-recipes", one)
    assert rc == 0 and "recommendation (supervised wins)" in out, err
    assert out.splitlines()[-1] == f"recipe written: {one}/student.yaml; run it with: mkd train '{one}/student.yaml'"
    two = tmp_path / "two"
    rc, out, err = mkd_in_process(capsys, "advise", law_file, "--flops", 1e15, "--students", 100, *common,
                                  "--write-recipes", two)
    assert rc == 0 and "recommendation (distil): train a teacher" in out, err
    assert sorted(p.name for p in two.iterdir()) == ["kd.yaml", "teacher.yaml"]
    assert out.splitlines()[-3:] == [
        "2 recipes written; run them in this order, each after the one before has finished:",
        f"  1. mkd train {two}/teacher.yaml", f"  2. mkd train {two}/kd.yaml"]
