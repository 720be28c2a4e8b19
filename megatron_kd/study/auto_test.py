"""The registered test of a sweep's kd.auto points against its α grid (docs/STUDY.md, "kd.auto
against the grid"): does one kd.auto run per teacher do what that teacher's best grid point does?

Per teacher (and per other grid coordinate the auto point has: temperature, kind, top-k):
- the reference is its best point on the grid with α = 0 (the baseline) competing, chosen by the
  seed mean on the test's set (the choice favours the grid: the best of several noisy means is
  biased low);
- d = the paired (auto − reference) loss over the seeds both have (positive: auto worse); its SE
  σ·√(2/n) from the fixed-α family's residual σ and degrees of freedom, as a per-point contrast
  of a complete design reads it;
- the margin m = max(floor, the per-point MDE at 80 % power, one-sided α = 0.05, at that σ);
- "not worse" when the one-sided 95 % upper bound of d is below m.
Overall: "auto matches the grid" when every teacher is not worse (an intersection–union test: no
correction); "does not hold" when for at least one teacher d > 0 at one-sided p < 0.05 after Holm
over the teachers; else "inconclusive". The other sets' differences (auto − the same reference)
are secondary, with two-sided intervals at the report's level. Pure functions of analysis.analyse's
per-student results; the report renders them (report_auto.py)."""

from __future__ import annotations

import math

from scipy.special import stdtrit

from megatron_kd.study.paired import Estimate, PairedFit, holm
from megatron_kd.study.stats import is_auto

ONE_SIDED = 0.05  # the registered test's level
POWER = 0.8  # the margin's MDE: 80 % power
MARGIN_FLOOR = 0.01  # nats, unless the sweep's `primary.auto.margin` registers another
FIXED_FAMILY = "fixed α"  # analysis.comparison_family's name of the grid's points
VERDICTS = ("auto matches the grid", "does not hold", "inconclusive")
# compute.ACCOUNTINGS in which a grid's runs add up ((c) would count the teacher's pretraining once per point)
GRID_ACCOUNTINGS = ("a", "b")


def fixed_sigma_df(fit: PairedFit) -> tuple[float | None, int]:
    """The fixed-α family's residual σ and degrees of freedom in `fit` (the per-point contrasts'):
    its own fit where the families are separated, else the fit's pooled one."""
    fams = fit.families
    if fams is not None and fams.active and FIXED_FAMILY in fams.names:
        return fams.sigma_df(FIXED_FAMILY)
    return fit.sigma, fit.df


def mde(se: float | None, df: int, alpha: float = ONE_SIDED, power: float = POWER) -> float | None:
    """The effect a one-sided t test at `alpha` detects with probability `power`."""
    if se is None or df < 1:
        return None
    return float((stdtrit(df, 1 - alpha) + stdtrit(df, power)) * se)


def paired_difference(fit: PairedFit, point, reference) -> tuple[float, int]:
    """(mean over the seeds both have of point − reference, those seeds' count)."""
    a, b = fit.cells.get(point, {}), fit.cells.get(reference, {})
    diffs = [a[s] - b[s] for s in a if s in b and a[s] is not None and b[s] is not None
             and math.isfinite(a[s]) and math.isfinite(b[s])]
    return (sum(diffs) / len(diffs) if diffs else math.nan), len(diffs)


def _coordinates(p: dict) -> tuple:
    return p.get("teacher"), p.get("temperature"), p.get("kind"), p.get("top_k")


def reference(auto: dict, points: list[dict], fit: PairedFit, baseline) -> dict:
    """The auto point's teacher's best grid point on `fit`'s set by seed mean, the baseline
    (α = 0) competing: {key, alpha, mean}."""
    grid = [p for p in points if p["teacher"] and p.get("alpha") is not None and not p.get("alpha_schedule")
            and not is_auto(p) and _coordinates(p) == _coordinates(auto)]
    cands = [{"key": baseline, "alpha": 0.0, "mean": fit.mean(baseline)}]
    cands += [{"key": p["key"], "alpha": p["alpha"], "mean": fit.mean(p["key"])} for p in grid]
    cands = [c for c in cands if math.isfinite(c["mean"])]
    return min(cands, key=lambda c: c["mean"]) if cands else {"key": baseline, "alpha": 0.0, "mean": math.nan}


def _difference(fit: PairedFit, auto_key, ref_key) -> Estimate:
    sigma, df = fixed_sigma_df(fit)
    d, n = paired_difference(fit, auto_key, ref_key)
    se = sigma * math.sqrt(2 / n) if sigma and n and math.isfinite(d) else None
    return Estimate(d, se, df)


def teacher_row(auto: dict, st: dict, s: str, floor: float, secondary: list[str], level: float) -> dict:
    """One auto point's test on set `s`: reference, d, its bound and margin, p of d > 0, and the
    secondary sets' differences from the same reference."""
    fit = st["fits"][s]
    ref = reference(auto, st["points"], fit, st["baseline"])
    e = _difference(fit, auto["key"], ref["key"])
    detectable = mde(e.se, e.df)
    margin = None if detectable is None else max(floor, detectable)
    upper = None if e.se is None or e.df < 1 else e.value + float(stdtrit(e.df, 1 - ONE_SIDED)) * e.se
    row = {"teacher": auto["teacher"], "key": auto["key"], "reference_alpha": ref["alpha"],
           "reference_loss": ref["mean"], "auto_loss": fit.mean(auto["key"]), "seeds": fit.n_seeds(auto["key"]),
           "d": e.value, "se": e.se, "df": e.df, "upper": upper, "mde": detectable, "margin": margin,
           "not_worse": upper is not None and upper < margin, "p_worse": e.p_greater(0.0), "secondary": {}}
    for o in secondary:
        if o in st["fits"]:
            eo = _difference(st["fits"][o], auto["key"], ref["key"])
            row["secondary"][o] = {"d": eo.value, "se": eo.se, "df": eo.df, "interval": eo.interval(level),
                                   "p": eo.p_two_sided()}
    return row


def auto_test(st: dict, id_set: str, secondary: list[str], level: float, entry: dict | None = None,
              controls=()) -> dict | None:
    """The registered test over one student's kd.auto points (None without one). `entry`: the
    sweep's `primary.auto` ({set, margin}); default the in-domain set and a 0.01 floor.
    `secondary`: the sets whose differences are reported beside it (the OOD test sets)."""
    autos = [p for p in st["points"] if p["teacher"] and is_auto(p) and p["teacher"] not in set(controls)]
    if not autos:
        return None
    s = (entry or {}).get("set", id_set)
    floor = (entry or {}).get("margin", MARGIN_FLOOR)
    rows = [teacher_row(p, st, s, floor, [o for o in secondary if o != s], level)
            for p in sorted(autos, key=lambda p: repr(p["key"]))]
    adjusted = holm({i: r["p_worse"] for i, r in enumerate(rows)})
    for i, r in enumerate(rows):
        r["p_worse_holm"] = adjusted[i]
    sigma, df = fixed_sigma_df(st["fits"][s])
    return {"set": s, "margin_floor": floor, "sigma": sigma, "df": df, "one_sided": ONE_SIDED, "teachers": rows,
            "verdict": verdict(rows), "registered": entry is not None}


def verdict(rows: list[dict]) -> str:
    """The intersection–union verdict over the teachers' rows (auto_test's)."""
    if rows and all(r["not_worse"] for r in rows):
        return VERDICTS[0]
    if any(r["p_worse_holm"] is not None and r["p_worse_holm"] < ONE_SIDED and r["d"] > 0 for r in rows):
        return VERDICTS[1]
    return VERDICTS[2]


def grid_compute(test: dict, compute_points: list[dict], baseline_compute: dict) -> dict:
    """{teacher: {accounting (a, b): {grid, auto, grid_runs}}}: one seed's runs of each teacher's grid
    (its fixed-α points at the auto point's coordinates, and the baseline) against one kd.auto run,
    in FLOPs per accounting (compute.compute_study's per-run means; None where one is unknown)."""
    out = {}
    by_key = {q["key"]: q for q in compute_points}
    for r in test["teachers"]:
        auto = by_key.get(r["key"])
        if auto is None:
            continue
        # its grid at the auto point's temperature, kind and top-k (RunRow.point_key's fields 3 to 5)
        grid = [q for q in compute_points if q["teacher"] == r["teacher"] and q.get("alpha") is not None
                and not q.get("alpha_schedule") and not is_auto(q) and q["key"][3:6] == r["key"][3:6]]
        per = {}
        for k in GRID_ACCOUNTINGS:
            a = auto["compute"][k]
            parts = [q["compute"][k] for q in grid] + [baseline_compute.get(k)]
            per[k] = {"grid": None if any(x is None for x in parts) else float(sum(parts)), "auto": a,
                      "grid_runs": len(parts)}
        out[r["teacher"] if r["teacher"] not in out else repr(r["key"])] = per
    return out
