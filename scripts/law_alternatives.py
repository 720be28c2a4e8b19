"""Leave-one-cell-out scores of the distillation law's shipped form and two richer ones.

    python scripts/law_alternatives.py docs/law/results.csv

`mkd fit` ships the one-parameter mix `L_B + m (L_T - L_B)`. This script asks whether a KD
fraction that also moves with the teacher's loss relative to the student's baseline predicts
held-out cells better:

    mix        g = m
    log-ratio  g = m0 + m1 ln(L_T / L_B)
    power      g = m (L_B / L_T)^k

Each is scored exactly as `mkd fit` scores its forms (study/law_cv.py): a cell (student size,
tokens) is held out with its baselines and its KD runs; the supervised law is refitted without
it, the form without its KD runs, and both predict the cell's KD runs. "no effect" is the
refitted supervised law alone. docs/scaling-law.md quotes this script's output.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy.optimize import least_squares

from megatron_kd.study.law import fit_supervised, supervised_loss
from megatron_kd.study.law_cv import cell_of, supervised_refits
from megatron_kd.study.law_io import rows_of, runs_of


def fraction(form: str, x, L_T, L_B):
    if form == "mix":
        return x[0]
    if form == "log-ratio":
        return x[0] + x[1] * np.log(L_T / L_B)
    return x[0] * np.power(L_B / L_T, x[1])


STARTS = {"mix": [[0.1]], "log-ratio": [[0.1, 0.0], [0.1, -0.5]], "power": [[0.1, 0.0], [0.1, 2.0]]}


def fit_form(form: str, rows, sup: dict) -> np.ndarray:
    """Least squares on log-loss (as mkd fit), the best of a few starts."""
    L = np.array([r.loss for r in rows])
    T = np.array([r.teacher_loss for r in rows])
    B = np.array([supervised_loss(sup, r.N, r.D) for r in rows])

    def residual(x):
        pred = B + fraction(form, x, T, B) * (T - B)
        return np.where(pred > 0, np.log(np.abs(pred) + 1e-300) - np.log(L), 10.0)

    fits = [least_squares(residual, np.array(x0, dtype=float), xtol=1e-12, ftol=1e-12, gtol=1e-12)
            for x0 in STARTS[form]]
    return min(fits, key=lambda f: f.cost).x


def loco(form: str, kd, refits: dict) -> float:
    errors = []
    for cell in sorted({cell_of(r) for r in kd}):
        sup = refits[cell].params
        x = fit_form(form, [r for r in kd if cell_of(r) != cell], sup)
        for r in (r for r in kd if cell_of(r) == cell):
            base = supervised_loss(sup, r.N, r.D)
            pred = base + fraction(form, x, r.teacher_loss, base) * (r.teacher_loss - base)
            errors.append(math.log(pred / r.loss) if pred > 0 else math.inf)
    return float(np.sqrt(np.mean(np.square(errors))))


def no_effect(kd, refits: dict) -> float:
    errors = [math.log(supervised_loss(refits[cell_of(r)].params, r.N, r.D) / r.loss) for r in kd]
    return float(np.sqrt(np.mean(np.square(errors))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="a results table (docs/law/results.csv)")
    parser.add_argument("--set", default="indomain", help="the validation set (default indomain)")
    args = parser.parse_args()
    runs, _ = runs_of(rows_of([args.table]), args.set)
    refits = supervised_refits(runs)
    everything = fit_supervised([r for r in runs if r.teacher_loss is None], bootstrap=0, held_out=False).params
    for alpha in sorted({r.alpha for r in runs if r.teacher_loss is not None}):
        kd = [r for r in runs if r.teacher_loss is not None and r.alpha == alpha]
        print(f"alpha = {alpha:g}: {len(kd)} KD runs, {len({cell_of(r) for r in kd})} cells; "
              "leave-one-cell-out rms log-error:")
        print(f"  no effect  {100 * no_effect(kd, refits):.2f} %")
        for form in STARTS:
            full = fit_form(form, kd, everything)
            print(f"  {form:<10} {100 * loco(form, kd, refits):.2f} %   (all runs: {np.round(full, 4).tolist()})")


if __name__ == "__main__":
    main()
