"""The study's statistics, on the rows `mkd report` collects (one per finished run): seed bands,
the noise rule, best α, a fitted student-vs-teacher relation and the paper's four claims.

Rows carry `student`, `teacher` (None: a baseline), `alpha`, `temperature`, `kind`, `seed`,
`val` ({set: final loss}) and, for KD rows, `teacher_val` ({set: the teacher's own loss}),
`teacher_tokens` and `teacher_params` when known; a scheduled-α point has `alpha` None and
`alpha_schedule` (a label such as "1→0 cosine"). Pure functions: tested on synthetic rows.

The noise rule: a gain (the student's mean baseline loss minus a point's mean loss over its
seeds) is outside the noise when |gain| > 2 x its standard error, the point's and the baseline's
standard errors added in quadrature (about a 95% two-sided band for normal seed noise). A side
with one seed has no standard error; then the baselines' seed standard deviation stands in for
it (the spread one seed can land in), and with neither the verdict is "unknown".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

NOISE_SIGMAS = 2.0


@dataclass
class Band:
    mean: float
    se: float | None  # standard error of the mean; None with one seed
    n: int
    sd: float | None = None


def band(xs: list[float]) -> Band:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return Band(math.nan, None, 0)
    sd = statistics.stdev(xs) if len(xs) > 1 else None
    return Band(statistics.fmean(xs), sd / math.sqrt(len(xs)) if sd is not None else None, len(xs), sd)


def point_key(r: dict) -> tuple:
    """A sweep point's coordinates: every grid axis (seeds pooled)."""
    return (r["student"], r.get("teacher"), r.get("alpha"), r.get("temperature"), r.get("kind"), r.get("top_k"),
            r.get("alpha_schedule"))


def group_points(rows: list[dict], sets: list[str]) -> list[dict]:
    """One entry per point (seeds pooled): its key fields, {set: Band}, and the rows."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(point_key(r), []).append(r)
    out = []
    for key, rs in groups.items():
        first = rs[0]
        out.append({"student": key[0], "teacher": key[1], "alpha": key[2], "temperature": key[3],
                    "kind": key[4], "top_k": key[5], "alpha_schedule": key[6], "rows": rs, "seeds": len(rs),
                    "val": {s: band([r["val"].get(s) for r in rs]) for s in sets},
                    "teacher_val": first.get("teacher_val") or {}, "teacher_tokens": first.get("teacher_tokens"),
                    "teacher_params": first.get("teacher_params"),
                    "teacher_flops": first.get("teacher_pretrain_flops"), "names": [r["name"] for r in rs]})
    return out


def gain(point: dict, base: Band, s: str) -> dict:
    """{gain, se, verdict} of a point against its student's baseline band on set `s`."""
    b = point["val"].get(s)
    if b is None or b.n == 0 or base is None or base.n == 0:
        return {"gain": math.nan, "se": None, "verdict": "unknown"}
    g = base.mean - b.mean
    fallback = base.sd  # one seed: the baselines' seed spread is the noise it can land in
    se_p = b.se if b.se is not None else fallback
    se_b = base.se if base.se is not None else fallback
    if se_p is None or se_b is None:
        return {"gain": g, "se": None, "verdict": "unknown"}
    se = math.hypot(se_p, se_b)
    if abs(g) > NOISE_SIGMAS * se:
        verdict = "helps" if g > 0 else "hurts"
    else:
        verdict = "within noise"
    return {"gain": g, "se": se, "verdict": verdict}


def best_alpha(points: list[dict], s: str) -> dict:
    """Per teacher: the α with the largest mean gain on `s` (points need `gains`)."""
    out = {}
    for t in sorted({p["teacher"] for p in points if p["teacher"]}):
        cands = [p for p in points if p["teacher"] == t and p.get("alpha") is not None
                 and not math.isnan(p["gains"][s]["gain"])]
        if cands:
            top = max(cands, key=lambda p: p["gains"][s]["gain"])
            out[t] = {"alpha": top["alpha"], "gain": top["gains"][s]["gain"], "verdict": top["gains"][s]["verdict"]}
    return out


def fit_quadratic(x: list[float], y: list[float]) -> dict | None:
    """y = a + b x + c x^2 by least squares (needs 4+ points: one degree of freedom left for the
    residuals). The curvature is what the paper's claim 2 is about: c > 0 puts the best teacher
    strictly inside the range (a reversal); the minimum is at x* = -b / 2c."""
    if len(x) < 4 or len(set(x)) < 3:
        return None
    X = np.stack([np.ones(len(x)), np.asarray(x), np.asarray(x) ** 2], axis=1)
    coef, *_ = np.linalg.lstsq(X, np.asarray(y), rcond=None)
    resid = np.asarray(y) - X @ coef
    a, b, c = (float(v) for v in coef)
    curved = c > 1e-9 * max(1.0, abs(a), abs(b))  # rounding leaves a straight line a tiny c
    x_best = -b / (2 * c) if curved else None
    return {"a": a, "b": b, "c": c, "residuals": [float(v) for v in resid],
            "rms": float(np.sqrt(np.mean(resid ** 2))), "x_best": x_best,
            "inside": x_best is not None and min(x) <= x_best <= max(x)}


def spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else None


def _ranks(v: list[float]) -> list[float]:
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks
