"""Synthetic sweeps of study v3's registered shape (recipes/sweeps/cpu-study-v3-short.yaml) at the
study's measured noise: student cpu-tiny, five teachers and the unigram control at α 0.2/0.5/0.8,
seeds 1 and 2, baselines at 150 and 1,200 steps beside the 300-step ones; residual sd 0.016
in-domain and 0.023 OOD (correlated 0.62 per run). Optional: α-schedule points, and a noise scale
per comparison family (e.g. schedules 3x the fixed-α variance)."""

from __future__ import annotations

import numpy as np

from megatron_kd.study.rows import RunRow
from tests.study.runrow import run_row

SIGMA = {"indomain": 0.016, "ood_dev": 0.023, "ood_test": 0.023}  # the study's measured residual sd
SETS = ("indomain", "ood_dev", "ood_test")
BASE = {"indomain": 4.348, "ood_dev": 6.05, "ood_test": 6.09}
V3 = {"small@0.3ep": (787584, 335872, 4.62), "small@1ep": (787584, 1118208, 3.95),
      "tiny@1ep": (98624, 1118208, 4.10), "tiny@4ep": (98624, 4472832, 3.80),
      "micro@4ep": (12352, 4472832, 4.50), "unigram": (0, None, 6.30)}
ALPHAS = (0.2, 0.5, 0.8)
SEEDS = (1, 2)
FRONTIER = (614400 // 2, 614400 * 4)  # the baselines at 150 and 1,200 steps (tokens)


def v3_rows(rng, effect=None, seeds=SEEDS, schedules=(), scale=None, corr=0.62, seed_sd=0.013,
            sigma=None) -> list[RunRow]:
    """Rows as the report reads them. effect(teacher, α or schedule, set) -> true gain (none by
    default); scale(family) -> a multiplier of the noise sd (1 by default), family one of
    "baseline", "fixed α", "scheduled α", "controls", "frontier baselines"."""
    sd = np.array([(sigma or SIGMA)[s] for s in SETS])
    cov = np.outer(sd, sd) * (np.full((3, 3), corr) + (1 - corr) * np.eye(3))
    seed_eff = {s: rng.normal(0, seed_sd, 3) for s in seeds}

    def run(name, family, gains, seed, **kw):
        e = seed_eff[seed] + (scale(family) if scale else 1.0) * rng.multivariate_normal(np.zeros(3), cov)
        val = {s: BASE[s] - gains[i] + e[i] for i, s in enumerate(SETS)}
        return run_row(name, "s", val=val, seed=seed, student_params=98624, **kw)

    rows = [run(f"base-{s}", "baseline", (0.0,) * 3, s, teacher=None, alpha=0.0) for s in seeds]
    rows += [run(f"base{n}-{s}", "frontier baselines", (0.0,) * 3, s, teacher=None, alpha=0.0, baseline_tokens=n)
             for n in FRONTIER for s in seeds]
    for t, (params, tokens, own) in V3.items():
        meta = dict(teacher=t, temperature=1.0, kind="forward_kl", teacher_tokens=tokens, teacher_params=params,
                    teacher_model=t.split("@")[0], teacher_val={"indomain": own, "ood_dev": own + 1.5,
                                                                "ood_test": own + 1.5})
        family = "controls" if params == 0 else "fixed α"
        for a in ALPHAS:
            g = tuple(effect(t, a, s) if effect else 0.0 for s in SETS)
            rows += [run(f"{t}-a{a}-{s}", family, g, s, alpha=a, **meta) for s in seeds]
        for sched in schedules if params else ():
            g = tuple(effect(t, sched, s) if effect else 0.0 for s in SETS)
            rows += [run(f"{t}-{sched}-{s}", "scheduled α", g, s, alpha=None, alpha_schedule=sched, **meta)
                     for s in seeds]
    return rows
