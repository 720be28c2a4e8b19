"""`mkd advise`: given a fitted law (law.json from `mkd fit`) and a compute budget, should one
distil, from which teacher, and how long should the student train?

Compute per student (FLOPs), as Busbridge et al. count it:
    C = 6 N_S D_S  +  2 N_T D_S  +  6 N_T D_T / K
(the student's training, the teacher's forward over the student's tokens, and the teacher's own
training shared by the K students it serves; 0 for a teacher that already exists). For each
option the student's tokens are what the budget leaves; the options are the supervised run, an
existing teacher at each fitted alpha, and a teacher to train (its size on a grid over the
fitted sizes, the budget's share for it on a grid) at each fitted alpha. Every prediction comes
with the interval of the law's bootstrap; an option that needs the law outside what it was fitted
on (sizes, tokens, teacher losses) is left out, and a budget with no option inside is refused
unless `extrapolate`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_kd.errors import ConfigError
from megatron_kd.study.law import distilled_loss, supervised_loss

FORMAT = "megatron_kd.law/1"


@dataclass(frozen=True)
class Law:
    supervised: dict
    supervised_samples: list
    fixed: dict
    mixes: dict  # alpha -> {"params", "samples"}
    ranges: dict  # N, D, teacher_loss: [low, high]
    parameters: str = "non-embedding"  # what N counts

    @classmethod
    def load(cls, path: str | Path) -> "Law":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
            if d.get("format") != FORMAT:
                raise ValueError(f"format {str(d.get('format'))[:40]!r}, not {FORMAT}")
            sup = d["supervised"]
            mixes = {float(a): m for a, m in d["distillation"].items() if isinstance(m, dict)}
            return cls(sup["params"], sup.get("samples", []), sup.get("fixed", {}), mixes, d["ranges"],
                       d.get("parameters", "non-embedding"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{p} is not a law written by `mkd fit` ({str(exc)[:120]}); fit one with "
                              "`mkd fit SWEEP_DIR --out law.json`") from exc


@dataclass
class Option:
    kind: str  # supervised | existing teacher | train a teacher
    alpha: float | None
    N_S: float
    D_S: float
    N_T: float | None
    D_T: float | None
    loss: float
    interval: tuple | None
    flops: dict

    def describe(self) -> str:
        if self.kind == "supervised":
            what = "supervised"
        elif self.kind == "existing teacher":
            what = f"distil at α={self.alpha:g} from the existing teacher ({self.N_T:.3g} parameters)"
        else:
            what = (f"train a teacher of {self.N_T:.3g} parameters for {self.D_T:.3g} tokens, distil at "
                    f"α={self.alpha:g}")
        iv = f" [{self.interval[0]:.4f}, {self.interval[1]:.4f}]" if self.interval else ""
        return f"{what}; student {self.N_S:.3g} parameters for {self.D_S:.3g} tokens: loss {self.loss:.4f}{iv}"


RANGE_SLACK = 1e-3  # a value given rounded (a teacher loss typed as 3.9549) is not an extrapolation


def _inside(law: Law, key: str, x: float) -> bool:
    lo, hi = law.ranges[key]
    return lo * (1 - RANGE_SLACK) <= x <= hi * (1 + RANGE_SLACK)


def _interval(values: list[float]) -> tuple | None:
    v = [x for x in values if math.isfinite(x)]
    if len(v) < 10:
        return None
    lo, hi = np.quantile(v, [0.025, 0.975])
    return float(lo), float(hi)


def _supervised(law: Law, N, D, samples: bool = True):
    loss = float(supervised_loss(law.supervised, N, D))
    band = [float(supervised_loss(s, N, D)) for s in law.supervised_samples] if samples else []
    return loss, _interval(band)


def _distilled(law: Law, alpha: float, L_T, N, D, teacher_sup: tuple | None = None):
    """Loss and interval; `teacher_sup` = (N_T, D_T): the teacher's loss from the supervised law
    (of the same bootstrap sample), else the given L_T."""
    mix = law.mixes[alpha]

    def one(sup, dist):
        lt = supervised_loss(sup, *teacher_sup) if teacher_sup else L_T
        return float(distilled_loss(dist, sup, lt, N, D))

    loss = one(law.supervised, mix["params"])
    sups, dists = law.supervised_samples, mix.get("samples", [])
    band = [one(sups[i % len(sups)], d) for i, d in enumerate(dists)] if sups and dists else []
    return loss, _interval(band)


def advise(law: Law, budget: float, student_sizes: list[float], teacher: tuple | None = None,
           students: int = 1, extrapolate: bool = False, teacher_sizes: list[float] | None = None,
           shares: int = 19) -> tuple[list[Option], list[str]]:
    """(options, best first; notes). `teacher` = (N_T, L_T) of an existing teacher."""
    if budget <= 0 or students < 1:
        raise ConfigError(f"a budget needs FLOPs > 0 and --students >= 1 (got {budget:g}, {students})")
    ok = (lambda key, x: True) if extrapolate else (lambda key, x: _inside(law, key, x))
    options, left_out = [], 0
    for N_S in student_sizes:
        if not ok("N", N_S):
            left_out += 1
            continue
        D = budget / (6 * N_S)
        if ok("D", D):
            loss, iv = _supervised(law, N_S, D)
            options.append(Option("supervised", None, N_S, D, None, None, loss, iv, {"student": budget}))
        else:
            left_out += 1
        for alpha in law.mixes:
            if teacher is not None:
                N_T, L_T = teacher
                D_S = budget / (6 * N_S + 2 * N_T)
                if ok("D", D_S) and ok("teacher_loss", L_T):
                    loss, iv = _distilled(law, alpha, L_T, N_S, D_S)
                    options.append(Option("existing teacher", alpha, N_S, D_S, N_T, None, loss, iv,
                                          {"student": 6 * N_S * D_S, "teacher forward": 2 * N_T * D_S}))
                else:
                    left_out += 1
            for N_T in teacher_sizes or _grid(*law.ranges["N"], 9):
                for f in np.linspace(0.05, 0.95, shares):
                    D_T = f * budget * students / (6 * N_T)
                    D_S = (1 - f) * budget / (6 * N_S + 2 * N_T)
                    L_T = float(supervised_loss(law.supervised, N_T, D_T))
                    if not (ok("N", N_T) and ok("D", D_T) and ok("D", D_S) and ok("teacher_loss", L_T)):
                        left_out += 1
                        continue
                    loss, iv = _distilled(law, alpha, None, N_S, D_S, teacher_sup=(N_T, D_T))
                    options.append(Option("train a teacher", alpha, N_S, D_S, N_T, D_T, loss, iv,
                                          {"student": 6 * N_S * D_S, "teacher forward": 2 * N_T * D_S,
                                           "teacher training (this student's share)": f * budget}))
    if not options:
        lo, hi = law.ranges["D"]
        raise ConfigError(f"a budget of {budget:.3g} FLOPs puts every option outside the fitted law (student "
                          f"sizes {law.ranges['N'][0]:.3g}-{law.ranges['N'][1]:.3g}, tokens {lo:.3g}-{hi:.3g}); "
                          "choose a budget and sizes inside, or pass --extrapolate")
    notes = [f"{left_out} candidate(s) left out: outside the fitted ranges (--extrapolate keeps them)"] \
        if left_out else []
    if teacher is not None and not ok("teacher_loss", teacher[1]):  # its every option is gone: say why
        lo, hi = law.ranges["teacher_loss"]
        notes.insert(0, f"the existing teacher's loss {teacher[1]:.4f} is outside the teacher losses the law "
                        f"was fitted on ({lo:.4f}-{hi:.4f}): no option distils from it (--extrapolate keeps them, "
                        "unvalidated)")
    options.sort(key=lambda o: o.loss)
    return _best_per_kind(options), notes


def _grid(lo: float, hi: float, n: int) -> list[float]:
    return list(np.geomspace(lo, hi, n)) if hi > lo else [lo]


def _best_per_kind(options: list[Option]) -> list[Option]:
    """The best option of each kind and alpha (the full grid is noise to a reader)."""
    seen, out = set(), []
    for o in options:
        key = (o.kind, o.alpha)
        if key not in seen:
            seen.add(key)
            out.append(o)
    return out


def recommendation(options: list[Option]) -> str:
    best = options[0]
    sup = next((o for o in options if o.kind == "supervised"), None)
    verdict = "supervised wins" if best.kind == "supervised" else "distil"
    line = f"recommendation ({verdict}): {best.describe()}"
    if sup is not None and best is not sup:
        line += f"; {sup.loss - best.loss:.4f} nats below supervised at the same compute"
        if best.interval and sup.interval and best.interval[1] >= sup.interval[0]:
            line += " (the intervals overlap: not a clear win)"
    return line
