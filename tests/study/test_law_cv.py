"""The mix law and its leave-one-cell-out score (study/law_cv.py): it nests "no KD effect" (a
sweep where the teacher changes nothing fits m ~ 0 and cross-validates like ignoring the teacher),
recovers a planted mix, and its held-out refits never see the held-out cell's runs, supervised
or distilled. On the shipped results (docs/law/law.json): a restart from the reported optimum
lowers the cost by under 0.1 %, and every point estimate lies inside its own interval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from megatron_kd.study import law_cv
from megatron_kd.study.law import (
    KD_BOUNDS,
    REFIT_TOLERANCE,
    FitPoint,
    Progress,
    _sup_problem,
    fit_kd,
    fit_supervised,
    refit_drop,
    supervised_loss,
)
from megatron_kd.study.law_cv import fit_distillation
from megatron_kd.study.law_io import runs_of
from megatron_kd.study.table import read_table
from tests.study.test_law import BUDGETS, NOISE, SIZES, SUP, TEACHERS

SHIPPED = Path(__file__).resolve().parents[2] / "docs" / "law"


def _mix_runs(m: float, seed: int = 5, noise: float = NOISE) -> list[FitPoint]:
    """Baselines of the planted supervised law and KD runs at α = 0.5 moved a fraction m toward
    their teacher's loss, each with log-normal noise."""
    rng = np.random.default_rng(seed)
    noisy = lambda x: float(x * np.exp(rng.normal(0, noise)))  # noqa: E731
    runs = [FitPoint(f"s{N:g}-{D:g}", N, D, noisy(supervised_loss(SUP, N, D))) for N in SIZES for D in BUDGETS]
    for N in SIZES[:3]:
        for D in BUDGETS[1::2]:
            base = supervised_loss(SUP, N, D)
            runs += [FitPoint(f"kd{N:g}-{D:g}-{t}", N, D, noisy(base + m * (t - base)), t, 0.5) for t in TEACHERS]
    return runs


def test_no_kd_effect_fits_a_mix_of_zero_and_scores_like_ignoring_the_teacher():
    runs = _mix_runs(0.0)
    sup = fit_supervised(runs, bootstrap=20, held_out=False)  # its own uncertainty enters m's interval
    fit = fit_distillation(runs, sup, bootstrap=40)[0.5]
    assert fit.form == "mix" and abs(fit.params["m"]) < 0.01
    lo, hi = fit.interval("m")
    assert lo <= 0 <= hi
    assert fit.cv["law_rmse_log"] == pytest.approx(fit.cv["no_effect_rmse_log"], rel=0.1)


def test_a_planted_mix_is_recovered_and_beats_ignoring_the_teacher():
    runs = _mix_runs(0.3)
    sup = fit_supervised(runs, bootstrap=20, held_out=False)
    fit = fit_distillation(runs, sup, bootstrap=40)[0.5]
    assert fit.form == "mix" and abs(fit.params["m"] - 0.3) < 0.02
    lo, hi = fit.interval("m")
    assert lo <= 0.3 <= hi and lo <= fit.params["m"] <= hi
    assert fit.cv["law_rmse_log"] < 0.5 * fit.cv["no_effect_rmse_log"] and fit.cv["cells"] == 6
    assert law_cv.beats_no_effect(fit.cv)


def test_a_held_out_cell_is_seen_by_no_refit(monkeypatch):
    """Every refit under the cross-validation, supervised or distilled, is blind to the cell it
    predicts; the distillation refit stands on the supervised law refitted without that cell."""
    runs = _mix_runs(0.3)
    kd_cells = {law_cv.cell_of(r) for r in runs if r.teacher_loss is not None}
    seen_by_sup, calls = {}, []
    real_sup, real_kd = law_cv.fit_supervised, law_cv.fit_kd

    def recording_sup(rs, *a, **k):
        fit = real_sup(rs, *a, **k)
        seen_by_sup[id(fit)] = {law_cv.cell_of(r) for r in rs}
        return fit

    def recording_kd(form, rows, sup, *a, **k):
        calls.append(({law_cv.cell_of(r) for r in rows}, seen_by_sup.get(id(sup))))
        return real_kd(form, rows, sup, *a, **k)

    monkeypatch.setattr(law_cv, "fit_supervised", recording_sup)
    monkeypatch.setattr(law_cv, "fit_kd", recording_kd)
    sup = real_sup(runs, bootstrap=0, held_out=False)
    fit_distillation(runs, sup, bootstrap=0)
    held_out_fits = [(kd, s) for kd, s in calls if s is not None]
    assert len(held_out_fits) == len(kd_cells)  # one refit per KD cell, then the full fit
    for kd, s in held_out_fits:
        (held,) = kd_cells - kd
        assert held not in s, held  # the supervised law under it did not see the cell's baselines
    assert calls[-1] == (kd_cells, None)  # the reported law: all runs, on the full supervised law


def test_a_long_fit_says_where_it_is():
    said = []
    progress = Progress(said.append, every=0.0)
    fit_supervised(_mix_runs(0.0), bootstrap=3, held_out=False, progress=progress)
    assert said == ["supervised bootstrap 0/3", "supervised bootstrap 1/3", "supervised bootstrap 2/3"]


@pytest.fixture(scope="module")
def shipped():
    rows = read_table(SHIPPED / "results.csv")[0]
    return runs_of(rows, "indomain")[0], json.loads((SHIPPED / "law.json").read_text())


def test_a_restart_from_the_shipped_optimum_lowers_the_cost_by_under_a_tenth_of_a_percent(shipped):
    runs, law = shipped
    sup_runs = [r for r in runs if r.teacher_loss is None]
    free, _, residual_for, bounds, _ = _sup_problem(sup_runs)
    p = law["supervised"]["params"]
    x = np.log([p[k] for k in free])
    assert law["supervised"]["solver"]["status"] > 0
    assert refit_drop(residual_for(np.arange(len(sup_runs))), x, bounds) < REFIT_TOLERANCE
    sup = fit_supervised(runs, bootstrap=0, held_out=False)
    for a, d in law["distillation"].items():
        rows = [r for r in runs if r.teacher_loss is not None and r.alpha == float(a)]
        fit = fit_kd(d["form"], rows, sup)
        assert d["solver"]["status"] > 0 and fit.solver["refit_drop"] < REFIT_TOLERANCE
        assert fit.params == pytest.approx(d["params"], rel=1e-6)
        assert KD_BOUNDS[d["form"]][0][0] < d["params"]["m"] < KD_BOUNDS[d["form"]][1][0]


def test_every_shipped_estimate_lies_inside_its_own_interval(shipped):
    _, law = shipped
    fits = [law["supervised"]] + [d for d in law["distillation"].values() if isinstance(d, dict)]
    for fit in fits:
        for k, iv in fit["intervals"].items():
            assert iv is not None, k
            v = fit["params"][k]
            slack = 1e-9 * max(abs(v), 1.0)
            assert iv[0] - slack <= v <= iv[1] + slack, (k, v, iv)
        assert set(fit["identification"]) == set(fit["intervals"])
    assert law["supervised"]["boundary"] and "γ at its bound" in law["supervised"]["identification"]["gamma"]
    mix = law["distillation"]["0.5"]
    assert mix["form"] == "mix" and mix["cv"]["law_rmse_log"] < mix["cv"]["no_effect_rmse_log"]
    assert not math.isnan(mix["cv"]["no_effect_rmse_log"]) and law["loss"] == "plain least squares on log-loss"
