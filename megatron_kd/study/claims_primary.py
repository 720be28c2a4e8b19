"""The claims read through registered primary contrasts (primary.py): each registered claim is
one test named before the sweep ran, its p one-sided and uncorrected within the claim (Holm over
the claims follows in claims.read_claims); "does not hold" reads the same contrast the other way.
The comparisons the claim's unregistered test would read are listed as secondary: uncorrected
p-values, no verdict."""

from __future__ import annotations

import math

from megatron_kd.study.claim_parts import axis_text, both, by_teacher, fmt, read_axis, read_ood_set, teacher_axes
from megatron_kd.study.primary import describe_alphas

SECONDARY_SHOWN = 12  # secondary comparisons named in the text (the smallest p first); the rest counted


def _not_tested(null: str, why: str, **extra) -> dict:
    return {"verdict": "not tested", "null": null, "p": None, "why": why, **extra}


def _secondary_text(rows: list[dict]) -> str:
    """`rows`: [{comparison, value, p}]; the smallest p first, at most SECONDARY_SHOWN named."""
    if not rows:
        return ""
    shown = sorted(rows, key=lambda r: (r["p"] is None, r["p"] if r["p"] is not None else 0.0))[:SECONDARY_SHOWN]
    text = ", ".join(f"{r['comparison']} {r['value']:+.4f}" + (f" (p {r['p']:.3g})" if r["p"] is not None else "")
                     for r in shown)
    more = f", and {len(rows) - len(shown)} more" if len(rows) > len(shown) else ""
    return f"; secondary, uncorrected one-sided p (no verdict): {text}{more}"


def claim1_registered(kd, fits, baseline_id, id_set, sets, level, controls, entry: dict) -> dict:
    """The mean paired gain (baseline − point) over the registered teachers × α on the registered
    set, one-sided > 0; "weak" teachers are those worse in-domain than the student's baseline."""
    base = fits[id_set].mean(baseline_id)
    real = [p for p in kd if p["teacher"] not in controls]
    weak = sorted({p["teacher"] for p in real if p["teacher_val"].get(id_set, -math.inf) > base})
    named = weak if entry["teachers"] == "weak" else list(entry["teachers"])
    s, alphas = entry["set"], set(entry["alpha"])
    who = "the weak teachers" + (f" ({', '.join(named)})" if named else "") if entry["teachers"] == "weak" \
        else ", ".join(named)
    what = f"the mean paired gain over {who} at α ∈ {describe_alphas(alphas)} on {s}"
    null = f"{what} is at most 0"
    if not named:
        return _not_tested(null, f"registered primary contrast: {what}; no teacher is worse in-domain than the "
                                 f"student's baseline ({base:.4f})")
    fit = fits[s]
    pts = [p for p in real if p["teacher"] in named and p["alpha"] in alphas and fit.n_seeds(p["key"])]
    if not pts:
        return _not_tested(null, f"registered primary contrast: {what}; none of its points has a {s} loss")
    mean = fit.contrast({fit.baseline: 1.0, **{p["key"]: -1.0 / len(pts) for p in pts}})
    p_claim, p_hurt = mean.p_greater(), mean.p_less()
    why = f"registered primary contrast: {what} ({len(pts)} points): {fmt(mean, level)}" + (
        f", one-sided p = {p_claim:.3g} (one test: no correction within the claim)" if p_claim is not None else "")
    have = {(p["teacher"], p["alpha"]) for p in pts}
    absent = [f"{t} α={a:g}" for t in named for a in sorted(alphas) if (t, a) not in have]
    if absent:
        why += f"; registered points without runs: {', '.join(absent)}"
    strong = [t for t in named if t not in weak]
    if strong:
        why += (f"; registered teacher(s) {', '.join(strong)} not weak here (in-domain loss at or below the "
                f"baseline's {base:.4f}): read as registered")
    knowledge, missing, text = _beyond_controls(kd, controls, fit, pts, p_claim, level)
    why += text
    secondary = [{"comparison": f"{p['teacher']} α={p['alpha']:g} on {v}", "value": fits[v].gain(p["key"]).value,
                  "p": fits[v].gain(p["key"]).p_greater()}
                 for p in real if p["teacher"] in set(named) for v in sets]
    why += _secondary_text(secondary)
    return {"verdict": None, "null": null, "p": p_claim, "against": [("does not hold", p_hurt)], "why": why,
            "statistic": f"registered primary contrast: {what}, one-sided t", "weak": weak,
            "primary": {"contrast": what, "value": mean.value, "se": mean.se, "df": mean.df, "p": p_claim},
            "secondary": secondary, "as_smoothing": None if knowledge is None else not knowledge,
            "controls_missing": missing}


def _beyond_controls(kd, controls, fit, pts, p_claim, level) -> tuple[bool | None, list[str], str]:
    """The registered mean beyond each control teacher's at the same α (the mean over the points
    of gain(point) − gain(control at its α)), each an intersection-union test with the primary p:
    (whether every control is beaten, the controls not run, the text)."""
    at: dict = {}
    for c in kd:
        if c["teacher"] in controls:
            at.setdefault(c["teacher"], {})[c["alpha"]] = c
    ok, text, missing = None, "", []
    for name, by_alpha in sorted(at.items()):
        lacking = sorted({p["alpha"] for p in pts if p["alpha"] not in by_alpha})
        if lacking:
            missing.append(f"no {name} point at α={', '.join(f'{a:g}' for a in lacking)}")
            continue
        weights: dict = {}
        for p in pts:
            c = by_alpha[p["alpha"]]["key"]
            weights[c] = weights.get(c, 0.0) + 1.0 / len(pts)
            weights[p["key"]] = weights.get(p["key"], 0.0) - 1.0 / len(pts)
        d = fit.contrast(weights)
        pv = both(d.p_greater(), p_claim)
        ok = (ok is not False) and pv is not None and pv < 1 - level
        text += f"; beyond the {name} control at the same α: {fmt(d, level)}" + (
            f", one-sided p = {pv:.3g}" if pv is not None else "")
    if missing:
        text += "; controls not run: " + "; ".join(missing)
    return ok, missing, text


def claim2_registered(kd, fits, id_set, level, margin, entry: dict) -> dict:
    """The registered axis (weakest teacher first), each teacher at its own best α in-domain; its
    last step reverses or saturates (the axis's two readings, Bonferroni over the two)."""
    fit, ts = fits[id_set], list(entry["axis"])
    null = (f"along the registered axis {' → '.join(ts)} the gain still changes by more than the equivalence "
            "margin and the strongest teacher is not worse")
    detected = {tuple(a_ts): xs for _, a_ts, xs in teacher_axes(kd)}
    points_of = by_teacher(kd)
    r = read_axis("registered axis", ts, detected.get(tuple(ts)), points_of, fit, fit, level, margin)
    if r is None:
        return _not_tested(null, f"the registered axis {' → '.join(ts)} has fewer than two teachers of distinct "
                                 "strength with runs")
    others = [o for name, a_ts, xs in teacher_axes(kd) if tuple(a_ts) != tuple(ts)
              if (o := read_axis(name, a_ts, xs, points_of, fit, fit, level, margin)) is not None]
    secondary = [{"comparison": f"{o['axis']} last step", "value": o["last_step"].value, "p": o.get("p"),
                  "reading": o.get("reading")} for o in others]
    rest = ("; secondary, uncorrected (no verdict): " + "; ".join(
        axis_text(o, level) + (f", p = {o['p']:.3g}" if o.get("p") is not None else "") for o in others)) \
        if others else ""
    if not r["tested"]:
        return _not_tested(null, "a claim about a gain needs a gain: no teacher on the registered axis helps the "
                                 f"student in-domain; {axis_text(r, level)}{rest}", axes=[r, *others],
                           untested_by_data=True, secondary=secondary)
    p = r["p"]
    why = (f"registered primary contrast: {axis_text(r, level)}"
           + (f", p = {p:.3g} (reverses or saturates, Bonferroni over the two readings)" if p is not None else "")
           + rest)
    last = r["last_step"]
    return {"verdict": None, "null": null, "p": p, "against": [("does not hold", last.p_greater())],
            "axes": [r, *others], "margin": margin, "why": why,
            "statistic": f"registered axis {' → '.join(ts)}: its last step reverses (below 0) or saturates "
                         f"(within ±{margin:g}, two one-sided tests)",
            "primary": {"contrast": f"last step of {' → '.join(ts)}", "value": last.value, "se": last.se,
                        "df": last.df, "p": p}, "secondary": secondary}


def claim3_registered(kd, zfits, ood_sets, level, fits, controls, dev_of, es_fits, entry: dict) -> dict:
    """The mean over the real points of (OOD gain − in-domain gain) on the registered OOD test set,
    one-sided > 0, with that set's controls; the other OOD sets' means are secondary."""
    s = entry["set"]
    null = f"on {s}, OOD gain minus in-domain gain is at most zero"
    real = [p for p in kd if p["teacher"] not in controls]
    if not real:
        return _not_tested(null, "no KD point of a real teacher")
    r = read_ood_set(s, real, kd, zfits, level, fits, controls, dev_of, es_fits)
    mean = r["mean"]
    p = mean.p_greater()
    why = f"registered primary contrast: {r['parts'][0]}" + (
        f", one-sided p = {p:.3g} (one test: no correction within the claim)" if p is not None else "")
    why += "".join(f"; {part}" for part in r["parts"][1:])
    if r["missing"]:  # a registered control that could not run: said, never silently passed
        why += "; controls not run: " + "; ".join(r["missing"])
    secondary = []
    for o in ood_sets:
        if o != s:
            m = zfits[o].contrast({zfits[o].baseline: 1.0, **{q["key"]: -1.0 / len(real) for q in real}})
            secondary.append({"comparison": f"{o}: mean (OOD − in-domain) gain", "value": m.value,
                              "p": m.p_greater()})
    why += _secondary_text(secondary)
    return {"verdict": None, "null": null, "p": p, "against": [("does not hold", mean.p_less())],
            "statistic": f"registered primary contrast: on {s}, the mean over KD points of the per-run (OOD − "
                         "in-domain) loss difference, paired model; one-sided t", "why": why,
            "primary": {"contrast": f"mean (OOD − in-domain) gain on {s}", "value": mean.value, "se": mean.se,
                        "df": mean.df, "p": p}, "secondary": secondary,
            "as_smoothing": (not all(r["knowledge"])) if r["knowledge"] else None, "controls_missing": r["missing"]}
