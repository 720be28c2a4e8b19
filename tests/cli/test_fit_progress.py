"""`mkd fit` says its stages (cli/law_commands.py's FitConsole): its plan, each stage as it begins
(study/law.py's Progress.stage) and as the fit counts it, a line while a stage counts nothing,
and what it fitted. Fake runs and clock: fast; the one `mkd fit` of a table is marked slow."""

import pytest

from megatron_kd.cli.law_commands import FitConsole
from megatron_kd.console import Every
from megatron_kd.study.law import FitPoint, Progress
from megatron_kd.study.law_cv import fit_distillation


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _console():
    runs = [FitPoint("b1", 1e6, 1e7, 3.0), FitPoint("b2", 2e6, 1e7, 2.9), FitPoint("k1", 1e6, 1e7, 2.95, 2.5, 1.0),
            FitPoint("k2", 2e6, 1e7, 2.85, 2.5, 0.5)]
    clock, lines = Clock(), []
    return FitConsole(runs, 200, Every(25, clock), lines.append), clock, lines


def test_the_plan_names_every_stage():
    console, _, lines = _console()
    assert console.plan() == [
        "fit: 1. the supervised law on 2 baselines, 200 bootstrap resamples each",
        "fit: 2. leave-one-cell-out refits of the supervised law (2 cells)",
        "fit: 3. the distillation law at alpha 0.5 (1 run): each form (mix) cross-validated over the cells, "
        "the best fitted",
        "fit: 4. the distillation law at alpha 1 (1 run): each form (mix, busbridge) cross-validated over the "
        "cells, the best fitted"]


def test_stages_as_the_fit_counts_them_and_a_line_while_it_counts_nothing():
    console, clock, lines = _console()
    clock.t = 10
    console.say("supervised bootstrap 120/200")
    clock.t = 20
    console.say("leave-one-cell-out refits 1/2")
    assert lines == ["fit: supervised bootstrap 120/200 (0:00:10 elapsed)",
                     "fit: leave-one-cell-out refits 1/2 (0:00:20 elapsed)"]
    clock.t = 44
    console.beat()
    assert len(lines) == 2  # 24 s since the last line
    clock.t = 45
    console.beat()
    assert lines[-1] == "fit: still fitting, last at leave-one-cell-out refits 1/2 (0:00:45 elapsed)"
    console.finished({"distillation": {"0.5": {"form": "mix"}, "1.0": "too few cells"}})
    assert lines[-1] == ("fit: done in 0:00:45: the supervised law; distillation laws at alpha 0.5 (mix), "
                         "1 (not fitted)")


def test_a_stage_is_said_as_it_begins_and_restarts_the_count_timer():
    lines = []
    progress = Progress(lines.append, every=3600)
    progress.last -= 7200  # a count would be due...
    progress.stage("the supervised law")
    progress.tick("supervised bootstrap", 1, 200)  # ...but the stage line was just said
    assert lines == ["the supervised law"]
    Progress(None).stage("nothing to say to")  # no say: silent


def test_each_forms_cross_validation_is_a_stage_and_its_folds_are_counted():
    """Every cell's refit unusable: each form's folds are counted and skipped, nothing is fitted."""
    kd = [FitPoint(f"k{i}", n, d, 2.9, t, a) for i, (n, d, t, a) in enumerate(
        [(1e6, 1e7, 2.5, 0.5), (2e6, 1e7, 2.5, 0.5), (1e6, 1e7, 2.4, 1.0), (2e6, 2e7, 2.3, 1.0),
         (1e6, 2e7, 2.2, 1.0), (2e6, 1e7, 2.1, 1.0), (1e6, 1e7, 2.0, 1.0)])]
    refits = {(r.N, r.D): "held out" for r in kd}
    lines = []
    out = fit_distillation(kd, None, 0, 0, Progress(lines.append, every=0), refits)
    assert set(out) == {0.5, 1.0} and all(isinstance(why, str) for why in out.values())
    assert lines == ["alpha 0.5: form mix, cross-validation", "alpha 0.5 mix folds 0/2", "alpha 0.5 mix folds 1/2",
                     "alpha 1: form mix, cross-validation", *[f"alpha 1 mix folds {k}/4" for k in range(4)],
                     "alpha 1: form busbridge, cross-validation", *[f"alpha 1 busbridge folds {k}/4" for k in range(4)]]


@pytest.mark.slow
def test_mkd_fit_prints_its_stages(tmp_path, capsys):
    from tests.helpers import mkd_in_process
    from tests.study.law_data import write_runs_table

    table = write_runs_table(tmp_path / "runs.csv")
    rc, out, err = mkd_in_process(capsys, "fit", table, "--out", tmp_path / "law.json", "--bootstrap", 0)
    assert rc == 0, err
    assert out.startswith("fit: 1. the supervised law on 16 baselines\nfit: 2. leave-one-cell-out refits"), out
    for stage in ("the supervised law", "leave-one-cell-out refits", "alpha 1: form mix, cross-validation",
                  "alpha 1: form busbridge, cross-validation"):
        assert f"\nfit: {stage} (0:" in out, out
    assert "fit: done in " in out and "distillation laws at alpha 1 (busbridge)" in out, out
