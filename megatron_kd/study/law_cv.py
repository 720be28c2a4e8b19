"""Which distillation law to trust, scored by leave-one-cell-out error against ignoring the teacher.

A cell is one student configuration: a (student size N, training tokens D) pair. Its runs share
the supervised baselines the "no effect" predictor stands on, so holding out a cell means
holding out all of them: the supervised law is refitted without the cell's baselines, the
distillation law without the cell's KD runs (on top of that refitted supervised law), and both
predict the cell's KD runs. The no-KD predictor is the same refitted supervised law, scored on
the same runs, so the two errors compare like with like. A form earns its place when its error
is below the no-KD predictor's; `mkd advise` prices distillation only from such a law.

Per KD mix: the "mix" form is fitted at every alpha; Busbridge et al.'s only at alpha = 1 (pure
distillation, the objective it was written for) and only where the sweep can identify it; the
form with the lower cross-validated error is the one fitted and recorded.
"""

from __future__ import annotations

import math

import numpy as np

from megatron_kd.errors import ConfigError
from megatron_kd.study.law import (
    Fit,
    FitPoint,
    Progress,
    fit_kd,
    fit_supervised,
    kd_loss,
    kd_rows_too_few,
    supervised_layout,
    supervised_loss,
)

CELL = "(student size N, training tokens D): the cell's baselines and KD runs held out together"


def cell_of(r: FitPoint) -> tuple[float, float]:
    return (r.N, r.D)


def supervised_refits(runs: list[FitPoint], progress: Progress | None = None) -> dict:
    """cell -> the supervised law fitted without that cell's runs (or why it cannot be), for every
    cell that holds a run; the layout (which terms are free) must be the full fit's."""
    sup_runs = [r for r in runs if r.teacher_loss is None]
    layout = set(supervised_layout(sup_runs)[1])
    out = {}
    cells = sorted({cell_of(r) for r in runs})
    for k, cell in enumerate(cells):
        if progress:
            progress.tick("leave-one-cell-out refits", k, len(cells))
        rest = [r for r in sup_runs if cell_of(r) != cell]
        try:
            f = fit_supervised(rest, bootstrap=0, held_out=False, starts_kept=3)
        except ConfigError as exc:
            out[cell] = str(exc)
            continue
        out[cell] = f if set(f.fixed) == layout else "without it the sweep has one size or budget left"
    return out


def supervised_cv(runs: list[FitPoint], refits: dict) -> dict:
    """The supervised law's own leave-one-cell-out error on the baselines."""
    errors, skipped = [], []
    for cell in sorted({cell_of(r) for r in runs if r.teacher_loss is None}):
        f = refits.get(cell)
        if not isinstance(f, Fit):
            skipped.append([*cell, f])
            continue
        errors += [math.log(supervised_loss(f.params, r.N, r.D) / r.loss)
                   for r in runs if r.teacher_loss is None and cell_of(r) == cell]
    return _scores({"law": errors}, skipped)


def loco(form: str, rows: list[FitPoint], refits: dict, progress: Progress | None = None) -> dict:
    """`form`'s and the no-KD predictor's leave-one-cell-out errors on one mix's runs `rows`."""
    law, none, skipped, cells = [], [], [], 0
    held_out = sorted({cell_of(r) for r in rows})
    for k, cell in enumerate(held_out):
        if progress:
            progress.tick(f"alpha {rows[0].alpha:g} {form} folds", k, len(held_out))
        sup = refits.get(cell)
        train = [r for r in rows if cell_of(r) != cell]
        why = sup if not isinstance(sup, Fit) else kd_rows_too_few(form, train)
        if why:
            skipped.append([*cell, why])
            continue
        fit = fit_kd(form, train, sup)
        cells += 1
        for r in rows:
            if cell_of(r) == cell:
                with np.errstate(all="ignore"):
                    pred = float(kd_loss(form, fit.params, sup.params, r.teacher_loss, r.N, r.D))
                law.append(math.log(pred / r.loss) if pred > 0 and math.isfinite(pred) else math.inf)
                none.append(math.log(supervised_loss(sup.params, r.N, r.D) / r.loss))
    return _scores({"law": law, "no_effect": none}, skipped) | {"cells": cells}


def _scores(errors: dict, skipped: list) -> dict:
    out = {"cell": CELL, "runs": len(errors["law"]), "skipped": skipped}
    for name, e in errors.items():
        out[f"{name}_rmse_log"] = float(np.sqrt(np.mean(np.square(e)))) if e else None
        out[f"{name}_bias_log"] = float(np.mean(e)) if e else None
    return out


def beats_no_effect(cv: dict | None) -> bool:
    return bool(cv and cv.get("law_rmse_log") is not None and cv.get("no_effect_rmse_log") is not None
                and cv["law_rmse_log"] < cv["no_effect_rmse_log"])


def fit_distillation(runs: list[FitPoint], sup: Fit, bootstrap: int = 200, seed: int = 0,
                     progress: Progress | None = None, refits: dict | None = None) -> dict[float, Fit | str]:
    """One law per KD mix alpha, its form chosen by cross-validated error (see the module's
    docstring); a mix no form can be fitted to gets the reason instead."""
    refits = supervised_refits(runs, progress) if refits is None else refits
    kd = [r for r in runs if r.teacher_loss is not None]
    out: dict[float, Fit | str] = {}
    for a in sorted({r.alpha for r in kd}):
        rows = [r for r in kd if r.alpha == a]
        tried = {}
        for form in ("mix", "busbridge") if a == 1.0 else ("mix",):
            if progress:
                progress.stage(f"alpha {a:g}: form {form}, cross-validation")
            why = kd_rows_too_few(form, rows)
            tried[form] = why if why else loco(form, rows, refits, progress)
        scored = {f: c for f, c in tried.items() if isinstance(c, dict) and c["law_rmse_log"] is not None}
        if not scored:
            out[a] = "; ".join(f"{f}: {c if isinstance(c, str) else 'no cell could be held out'}"
                               for f, c in tried.items())
            continue
        form = min(scored, key=lambda f: scored[f]["law_rmse_log"])
        fit = fit_kd(form, rows, sup, bootstrap, seed, progress)
        fit.cv = scored[form] | {"forms": {f: (c["law_rmse_log"] if isinstance(c, dict) else c)
                                           for f, c in tried.items()}}
        out[a] = fit
    return out
