"""The sweep read against the paper's four claims (Lu & Liu 2026), each as holds / does not hold /
within noise / not tested, with the numbers behind the verdict. Points come from
stats.group_points with `gains` ({set: stats.gain(...)}) filled in.

Teacher strength is the teacher's own in-domain validation loss (lower = stronger). A teacher is
"weak" when the student's own no-KD baseline beats it in-domain, or when it has fewer parameters
than the student (when both are known).
"""

from __future__ import annotations

import math

from megatron_kd.study.stats import NOISE_SIGMAS, spearman


def _best(points: list[dict], teacher: str, s: str) -> dict | None:
    """The teacher's fixed-α point with the largest gain on `s` (scheduled-α points aside)."""
    cands = [p for p in points if p["teacher"] == teacher and p.get("alpha") is not None
             and not math.isnan(p["gains"][s]["gain"])]
    return max(cands, key=lambda p: p["gains"][s]["gain"]) if cands else None


def _strength(points: list[dict], teacher: str, id_set: str) -> float:
    p = next(p for p in points if p["teacher"] == teacher)
    return p["teacher_val"].get(id_set, math.nan)


def read_claims(points: list[dict], base: dict, id_set: str, ood_sets: list[str],
                student_params: dict | None = None) -> list[dict]:
    """[{claim, verdict, why}] for the four claims."""
    kd = [p for p in points if p["teacher"]]
    teachers = sorted({p["teacher"] for p in kd})
    out = []

    # 1. weak (small or under-trained) teachers improve the student, with a proper mix
    weak = []
    for t in teachers:
        p = next(q for q in kd if q["teacher"] == t)
        b = base.get(p["student"], {}).get(id_set)
        small = (p.get("teacher_params") and (student_params or {}).get(p["student"])
                 and p["teacher_params"] < student_params[p["student"]])
        if small or (b is not None and _strength(kd, t, id_set) > b.mean):
            weak.append(t)
    if not weak:
        out.append({"claim": 1, "verdict": "not tested", "why": "no teacher in the sweep is weaker than "
                    "the student's own baseline (or smaller than the student)"})
    else:
        bests = {t: {s: _best(kd, t, s) for s in [id_set, *ood_sets]} for t in weak}
        helped = [(t, s, b) for t, per in bests.items() for s, b in per.items()
                  if b and b["gains"][s]["verdict"] == "helps"]
        found = [(s, b) for per in bests.values() for s, b in per.items() if b is not None]
        hurt = bool(found) and all(b["gains"][s]["verdict"] == "hurts" for s, b in found)
        detail = "; ".join(f"{t} on {s}: best α={b['alpha']:g}, gain {b['gains'][s]['gain']:+.4f}"
                           + (f" ± {b['gains'][s]['se']:.4f}" if b["gains"][s]["se"] else "")
                           for t, per in bests.items() for s, b in per.items() if b)
        verdict = "holds" if helped else ("does not hold" if hurt else ("within noise" if found else "not tested"))
        out.append({"claim": 1, "verdict": verdict, "why": f"weak teachers {', '.join(weak)}: {detail}"})

    # 2. more teacher (parameters or tokens) saturates or reverses the gain
    ranked = sorted((t for t in teachers if not math.isnan(_strength(kd, t, id_set))
                     and _best(kd, t, id_set) is not None),
                    key=lambda t: -_strength(kd, t, id_set))  # weakest first
    if len(ranked) < 3:
        out.append({"claim": 2, "verdict": "not tested", "why": f"needs teachers of three strengths, the "
                    f"sweep has {len(ranked)}"})
    else:
        g = {t: _best(kd, t, id_set) for t in ranked}
        strongest = g[ranked[-1]]["gains"][id_set]
        weaker = [g[t]["gains"][id_set] for t in ranked[:-1]]
        top_weaker = max(weaker, key=lambda x: x["gain"])
        se = math.hypot(strongest["se"] or 0.0, top_weaker["se"] or 0.0) or None
        weakest = weaker[0]
        diff = strongest["gain"] - top_weaker["gain"]
        rise = strongest["gain"] - weakest["gain"]
        if se is None:
            verdict = "unknown (one seed, no noise estimate)"
        elif diff < -NOISE_SIGMAS * se:
            verdict = "holds (reverses)"
        elif abs(diff) <= NOISE_SIGMAS * se and rise > NOISE_SIGMAS * math.hypot(strongest["se"] or 0,
                                                                                  weakest["se"] or 0):
            verdict = "holds (saturates)"
        elif diff > NOISE_SIGMAS * se:
            verdict = "does not hold (still growing)"
        else:
            verdict = "within noise"
        curve = ", ".join(f"{t} (teacher loss {_strength(kd, t, id_set):.3f}): {g[t]['gains'][id_set]['gain']:+.4f}"
                          for t in ranked)
        out.append({"claim": 2, "verdict": verdict, "why": f"best in-domain gain by teacher strength, weakest "
                    f"first: {curve}; strongest minus best weaker {diff:+.4f}"
                    + (f" (2σ = {NOISE_SIGMAS * se:.4f})" if se else "")})

    # 3. KD helps out-of-distribution more than in-domain
    if not ood_sets:
        out.append({"claim": 3, "verdict": "not tested", "why": "no out-of-distribution validation set"})
    else:
        diffs = []
        for t in teachers:
            b = _best(kd, t, id_set)
            if b is None:
                continue
            for s in ood_sets:
                gi, go = b["gains"][id_set], b["gains"][s]
                if math.isnan(go["gain"]):
                    continue
                se = math.hypot(gi["se"] or 0.0, go["se"] or 0.0) or None
                diffs.append((t, s, go["gain"] - gi["gain"], se))
        above = [d for d in diffs if d[3] and d[2] > NOISE_SIGMAS * d[3]]
        below = [d for d in diffs if d[3] and d[2] < -NOISE_SIGMAS * d[3]]
        if not diffs:
            verdict = "not tested"
        elif len(above) > len(diffs) / 2:
            verdict = "holds"
        elif len(below) > len(diffs) / 2:
            verdict = "does not hold"
        else:
            verdict = "within noise"
        out.append({"claim": 3, "verdict": verdict, "why": "; ".join(
            f"{t}: {s} gain minus {id_set} gain {d:+.4f}" + (f" ± {se:.4f}" if se else "") for t, s, d, se in diffs)})

    # 4. the best α grows with the teacher's strength
    pairs = [(-_strength(kd, t, id_set), _best(kd, t, id_set)) for t in ranked]
    pairs = [(x, b["alpha"]) for x, b in pairs if b is not None]
    rho = spearman([x for x, _ in pairs], [a for _, a in pairs])
    if len(pairs) < 2:
        out.append({"claim": 4, "verdict": "not tested", "why": "needs two teachers"})
    else:
        alphas = [a for _, a in pairs]  # weakest first
        if rho is not None:
            verdict = "holds" if rho > 0.5 else ("does not hold" if rho < -0.5 else "within noise")
        else:
            verdict = "holds" if alphas[-1] > alphas[0] else ("does not hold" if alphas[-1] < alphas[0]
                                                             else "within noise")
        out.append({"claim": 4, "verdict": verdict, "why": "best α by teacher strength, weakest first: "
                    + ", ".join(f"{a:g}" for a in alphas) + (f"; Spearman ρ = {rho:+.2f}" if rho is not None else "")})
    return out


CLAIMS = {1: "with a proper LM/KD mix, small or under-trained teachers improve the student",
          2: "more teacher (parameters or training tokens) saturates or reverses the gain",
          3: "KD helps out-of-distribution more than in-domain",
          4: "the best α grows with the teacher's strength"}
