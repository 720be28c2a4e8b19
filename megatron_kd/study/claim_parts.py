"""The pieces the claims' tests share (claims.py, and claims_primary.py for the registered primary
contrasts): p-value combinations, the control comparisons, the teacher axes of claim 2 and the
reading of one axis, and claim 3's reading of one OOD set with its controls."""

from __future__ import annotations

import math

import numpy as np

from megatron_kd.study.paired import Estimate

ES_KEY = ("early-stopped baseline",)  # its point key in the test set's fit (analysis.early_stopped)


def fmt(e: Estimate, level: float) -> str:
    ci = e.interval(level)
    return f"{e.value:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else " (no noise estimate)")


def bonferroni(ps: list) -> float | None:
    ps = [p for p in ps if p is not None]
    return min(1.0, min(ps) * len(ps)) if ps else None


def both(*ps) -> float | None:
    """The p-value of "every one of these one-sided alternatives holds": the largest."""
    return None if any(p is None for p in ps) else max(ps)


def by_teacher(kd: list[dict]) -> dict:
    """{teacher: its points}, in the points' order (grouped once: a search per teacher is
    quadratic in a table of thousands of teachers)."""
    out: dict = {}
    for p in kd:
        out.setdefault(p["teacher"], []).append(p)
    return out


def beyond_control(fit, point, control, own_p):
    """(gain(point) - gain(control), the p of "a gain, and beyond the control's"): both one-sided
    alternatives must hold (an intersection-union test: the larger p), so a control that hurts
    more than a harmful teacher does not make that teacher's loss look like knowledge."""
    d = fit.contrast({control["key"]: 1.0, point["key"]: -1.0})
    return d, both(d.p_greater(), own_p)


def beats_control(kd, controls, fit, point, level) -> tuple[bool | None, str]:
    """Whether `point`'s gain on `fit`'s set beats every control teacher's at the same α (paired,
    one-sided): (None, "") when the sweep has no control at that α."""
    ctrl = [p for p in kd if p["teacher"] in controls and p["alpha"] == point["alpha"]]
    if not ctrl:
        return None, ""
    ok, parts = True, []
    own = fit.gain(point["key"]).p_greater()
    for c in ctrl:
        d, pv = beyond_control(fit, point, c, own)
        ok &= pv is not None and pv < 1 - level
        parts.append(f"beyond the {c['teacher']} control at α={point['alpha']:g}: {fmt(d, level)}"
                     + (f", one-sided p = {pv:.3g}" if pv is not None else ""))
    return ok, "; ".join(parts)


def teacher_axes(kd: list[dict]) -> list[tuple[str, list[str], dict]]:
    """Teacher axes of 2+ teachers: one model's training tokens, or the sizes at one budget
    (study v3's axes are pairs: tiny@1ep -> tiny@4ep, tiny@1ep -> small@1ep, ...)."""
    info = {}
    for p in kd:
        model = p.get("teacher_model") or p["teacher"].split("@")[0]
        info[p["teacher"]] = (model, p.get("teacher_tokens"), p.get("teacher_params"))
    axes = []
    for model in sorted({m for m, _, _ in info.values()}):
        ts = sorted((t for t, (m, tok, _) in info.items() if m == model and tok), key=lambda t: info[t][1])
        if len(ts) >= 2:
            axes.append((f"{model}: tokens", ts, {t: info[t][1] for t in ts}))
    for tok in sorted({tok for _, tok, _ in info.values() if tok}):
        ts = sorted((t for t, (_, tk, par) in info.items() if tk == tok and par), key=lambda t: info[t][2])
        if len(ts) >= 2 and len({info[t][2] for t in ts}) == len(ts):
            axes.append((f"{tok:,} tokens: size", ts, {t: info[t][2] for t in ts}))
    return axes


def read_axis(name: str, ts: list, xs: dict | None, points_of: dict, fit, choose, level: float,
              margin: float) -> dict | None:
    """One teacher axis (weakest first): each teacher at its own best α (on `choose`), the last
    step (strongest minus next) read on `fit`, with its p of "reverses or saturates" (Bonferroni
    over the two readings). `xs` ({teacher: its strength}) gives the slope over 3+ strengths;
    None (an axis given by name) leaves it out. None: fewer than two teachers of distinct strength."""
    pts = []
    for t in ts:
        cands = [p for p in points_of.get(t, []) if not math.isnan(choose.gain(p["key"]).value)]
        if cands:
            pts.append(max(cands, key=lambda p: choose.gain(p["key"]).value))
    if len(pts) < 2 or (xs is not None and len({float(xs[p["teacher"]]) for p in pts}) < 2):
        return None  # teachers of one strength (e.g. one checkpoint through several caches)
    alphas = sorted({p["alpha"] for p in pts})
    gains = [fit.gain(p["key"]) for p in pts]
    helped = any(g.interval(level) and g.interval(level)[0] > 0 for g in gains)
    last = fit.contrast({pts[-2]["key"]: 1.0, pts[-1]["key"]: -1.0})  # gain(strongest) - gain(next)
    slope = None
    if xs is not None:
        x = np.log10([float(xs[p["teacher"]]) for p in pts])
        if len(set(x.tolist())) >= 3:
            w = (x - x.mean()) / np.sum((x - x.mean()) ** 2)  # least-squares slope of gain on log10 x
            slope = fit.contrast({fit.baseline: 0.0, **{p["key"]: -wi for p, wi in zip(pts, w)}})
    r = {"axis": name, "alpha": alphas[0] if len(alphas) == 1 else None, "alphas": [p["alpha"] for p in pts],
         "teachers": [p["teacher"] for p in pts], "tested": helped, "last_step": last, "slope": slope}
    if helped:
        ci90 = last.interval(1 - 2 * (1 - level))  # two one-sided tests at 1 - level each
        p_rev = last.p_less()
        p_tost = (max(last.p_greater(-margin), last.p_less(margin))
                  if last.se is not None and last.df > 0 else None)
        ci = last.interval(level)
        r["p"] = bonferroni([p_rev, p_tost])
        if ci and ci[1] < 0:
            r["reading"] = "reverses"
        elif ci90 and -margin < ci90[0] and ci90[1] < margin:
            r["reading"] = "saturates"
        elif ci and ci[0] > 0:
            r["reading"] = "still growing"
        else:
            r["reading"] = "inconclusive"
    return r


def axis_text(r: dict, level: float) -> str:
    return (f"{r['axis']} ({', '.join(f'{t} α={a:g}' for t, a in zip(r['teachers'], r['alphas']))}): "
            f"last step {fmt(r['last_step'], level)}"
            + (f", slope per decade {fmt(r['slope'], level)}" if r["slope"] is not None else "") + ": "
            + (r.get("reading") or "no gain, not tested"))


def read_ood_set(s: str, real: list, kd: list, zfits: dict, level: float, fits=None, controls=(),
                 dev_of=None, es_fits=None) -> dict:
    """Claim 3 on one OOD test set: the mean over the real points of (OOD gain - in-domain gain),
    each point's one-sided p both ways, and the controls (the best point on the set's dev twin
    against the early-stopped baseline and the control teacher): {mean, p_ups, p_downs, parts,
    knowledge, missing}."""
    z = zfits[s]
    keys = [p["key"] for p in real]
    mean = z.contrast({z.baseline: 1.0, **{k: -1.0 / len(keys) for k in keys}})
    out = {"mean": mean, "p_ups": [], "p_downs": [], "knowledge": [], "missing": []}
    above = below = 0
    for k in keys:  # per point, Bonferroni over the points
        e = z.gain(k)
        pg, pl = e.p_greater(), e.p_less()
        out["p_ups"].append(pg)
        out["p_downs"].append(pl)
        above += pg is not None and pg * len(keys) < 1 - level
        below += pl is not None and pl * len(keys) < 1 - level
    parts = [f"{s}: mean over {len(keys)} KD points {fmt(mean, level)} ({above} point(s) significantly above, "
             f"{below} below)"]
    out["parts"] = parts
    dev = (dev_of or {}).get(s)
    if fits is None or dev is None:
        if controls:
            out["missing"].append(f"{s} has no dev twin")
        return out
    scored = [p for p in real if not math.isnan(fits[dev].gain(p["key"]).value)]
    if not scored:
        out["missing"].append(f"no point has a {dev} loss")
        return out
    best = max(scored, key=lambda p: fits[dev].gain(p["key"]).value)
    parts.append(f"controls on {s}, for the best point on {dev} ({best['teacher']} α={best['alpha']:g})")
    es = (es_fits or {}).get(s)
    if es is None:
        out["missing"].append(f"no early-stopped baseline on {s} (the baselines have no eval curves)")
    else:
        d = es.contrast({ES_KEY: 1.0, best["key"]: -1.0})
        pv = d.p_greater()
        out["knowledge"].append(pv is not None and pv < 1 - level)
        parts[-1] += (f": the early-stopped baseline minus it {fmt(d, level)}"
                      + (f", one-sided p = {pv:.3g}" if pv is not None else ""))
    ok, why = beats_control(kd, controls, fits[s], best, level)
    if ok is not None:
        out["knowledge"].append(ok)
        parts[-1] += f"; {why}"
    elif controls:
        out["missing"].append(f"no {'/'.join(sorted(controls))} point at α={best['alpha']:g}")
    return out
