"""Synthetic sweeps with the study's shape and noise (docs/STUDY.md): one student, teachers of
three sizes x three budgets, fixed α values, seeds shared with the baseline. A run's loss is
the point's true loss + a seed effect (shared by every run of that seed: the initialisation)
+ noise; in-domain and OOD noise correlated as the study measured (0.62)."""

from __future__ import annotations

import numpy as np

from megatron_kd.study.rows import RunRow
from tests.study.runrow import run_row

BASE = {"indomain": 4.348, "ood": 6.071, "ood_dev": 6.05, "ood_test": 6.09}
TEACHERS = {  # name: (params, tokens, own in-domain loss) — the study's zoo
    "micro@123K": (0.14e6, 122880, 5.917), "tiny@123K": (0.36e6, 122880, 5.500),
    "small@123K": (1.3e6, 122880, 5.089), "micro@369K": (0.14e6, 368640, 4.743),
    "tiny@369K": (0.36e6, 368640, 4.464), "small@369K": (1.3e6, 368640, 4.364),
    "micro@1.11M": (0.14e6, 1105920, 4.264), "tiny@1.11M": (0.36e6, 1105920, 3.926),
    "small@1.11M": (1.3e6, 1105920, 3.753)}


def sweep_rows(rng, effect=None, seeds=(1, 2, 3), alphas=(0.2, 0.5, 1.0), noise=0.009, seed_sd=0.013,
               corr=0.62, teachers=TEACHERS, sets=("indomain", "ood"), auto=None, common=None) -> list[RunRow]:
    """Rows as the report reads them; effect(teacher, alpha, set) -> true gain (default none).
    A teacher of 0 parameters is a control (the unigram). auto(teacher, set) -> the true gain of
    a kd.auto point per teacher (ceiling 1), drawn after every other run (the same rng gives the
    same fixed-α rows with or without them). `common`: fields every run has (e.g. its data_seed)."""
    k = len(sets)
    seed_eff = {s: rng.normal(0, seed_sd, k) for s in seeds}
    cov = noise ** 2 * (np.full((k, k), corr) + (1 - corr) * np.eye(k))

    def run(name, gains, seed, **kw):
        e = seed_eff[seed] + rng.multivariate_normal(np.zeros(k), cov)
        val = {s: BASE[s] - gains[i] + e[i] for i, s in enumerate(sets)}
        return run_row(**{"name": name, "student": "s", "val": val, "seed": seed, "student_params": 0.36e6, **kw,
                          **(common or {})})

    rows = [run(f"base-{s}", (0.0,) * k, s, teacher=None, alpha=0.0) for s in seeds]
    for t, (params, tokens, own) in teachers.items():
        for a in alphas:
            g = tuple(effect(t, a, s) if effect else 0.0 for s in sets)
            for s in seeds:
                rows.append(run(f"{t}-a{a}-{s}", g, s, teacher=t, alpha=a, temperature=1.0, kind="forward_kl",
                                teacher_val={"indomain": own, **{s: own + 1.5 for s in sets[1:]}},
                                teacher_tokens=tokens,
                                teacher_params=params, teacher_model=t.split("@")[0]))
    for t, (params, tokens, own) in teachers.items() if auto else ():
        g = tuple(auto(t, s) for s in sets)
        for s in seeds:
            rows.append(run(f"{t}-aauto-{s}", g, s, teacher=t, alpha=None, auto_ceiling=1.0, temperature=1.0,
                            kind="forward_kl", teacher_val={"indomain": own, **{s: own + 1.5 for s in sets[1:]}},
                            teacher_tokens=tokens, teacher_params=params, teacher_model=t.split("@")[0]))
    return rows
