"""The paper's four claims (Lu & Liu 2026) as stated tests on a sweep's paired fits (paired.py):
each has a null hypothesis, a statistic and a verdict — holds / does not hold / mixed /
inconclusive / not tested — with its numbers. "Holds" needs its primary test's p-value, Holm-
adjusted over the claims tested, below 1 - level; a claim resting on several comparisons (every
weak teacher, α and set) takes the smallest p times their number (Bonferroni), so picking the
best of many never passes for evidence. Under no effect no claim says "holds" more often than
the level allows (tests/study/test_claims_null.py simulates it). A sweep may register one primary
contrast per claim in advance (its `primary:` block, primary.py): that claim is then that one
test, with no Bonferroni within it, and its other comparisons are listed as secondary
(claims_primary.py; tests/study/test_claims_primary*.py).

Teacher strength is the teacher's own in-domain loss (lower = stronger). "Weak" is measured: a
teacher whose in-domain loss is above the student's own baseline.

Controls (study v3, docs/STUDY.md): a *control* teacher (no parameters: the unigram, which knows
token frequencies and nothing else) is no teacher for claims 2-4 and not "weak" for claim 1; a
gain counts as knowledge only where it beats the control's at the same α and set, else the claim
"holds as smoothing". Claim 3 also needs the best teacher (chosen on the dev half of the OOD set)
below the early-stopped baseline (the baseline at its lowest dev loss) on the test half. Choices
(best α, best teacher) are made on dev sets; verdicts read the test sets only.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from megatron_kd.study.claim_parts import (
    ES_KEY,
    axis_text,
    beyond_control,
    bonferroni,
    both,
    by_teacher,
    fmt,
    read_axis,
    read_ood_set,
    teacher_axes,
)
from megatron_kd.study.claims_primary import claim1_registered, claim2_registered, claim3_registered
from megatron_kd.study.paired import Estimate, holm
from megatron_kd.study.primary import check_names, current, parse_primary
from megatron_kd.study.stats import spearman

__all__ = ["CLAIMS", "ES_KEY", "best_alpha", "by_teacher", "read_claims"]

CLAIMS = {1: "with a proper LM/KD mix, weak teachers (worse than the student's own baseline) improve the student",
          2: "more teacher (parameters or training tokens) saturates or reverses the gain",
          3: "KD helps out-of-distribution more than in-domain",
          4: "the best α grows with the teacher's strength"}
CLAIM2_NULL = ("along a teacher axis the gain still changes by more than the equivalence margin and a "
               "stronger teacher is not worse")
CLAIM3_NULL = "OOD gain minus in-domain gain is zero"


def best_alpha(kd: list[dict], fit, level: float) -> dict:
    """Per teacher: the α with the largest mean gain over seeds, α = 0 (no KD: the baseline)
    competing, with that gain's interval (a best-of-k pick: the interval is optimistic)."""
    out = {}
    for t, points in sorted(by_teacher(kd).items()):
        cands = [(0.0, Estimate(0.0, 0.0, max(fit.df, 1)))]
        cands += [(p["alpha"], fit.gain(p["key"])) for p in points]
        cands = [(a, e) for a, e in cands if not math.isnan(e.value)]
        a, e = max(cands, key=lambda c: c[1].value)
        out[t] = {"alpha": a, "gain": e.value, "interval": e.interval(level), "candidates": len(cands)}
    return out


def claim1(kd, fits, baseline_id, id_set, sets, level, controls=()) -> dict:
    base = fits[id_set].mean(baseline_id)
    real = [p for p in kd if p["teacher"] not in controls]
    weak = sorted({p["teacher"] for p in real if p["teacher_val"].get(id_set, -math.inf) > base})
    null = "no weak teacher improves the student at any α on any set"
    if not weak:
        return {"verdict": "not tested", "null": null, "p": None,
                "why": f"no teacher is worse in-domain than the student's baseline ({base:.4f})"}
    weak_set = set(weak)
    tests = [(p, s, fits[s].gain(p["key"])) for p in real if p["teacher"] in weak_set for s in sets]
    p_claim = bonferroni([e.p_greater() for *_, e in tests])
    top = max(tests, key=lambda t: (t[2].value / t[2].se) if t[2].se else -math.inf)
    # "does not hold": every weak teacher hurts in-domain at every α (an intersection-union test:
    # the largest one-sided p), Holm-adjusted over the claims like "holds" (read_claims)
    p_hurt = both(*[fits[id_set].gain(p["key"]).p_less() for p in real if p["teacher"] in weak_set])
    hurt = p_hurt is not None and p_hurt < 1 - level
    why = (f"{len(weak)} weak teacher(s) ({', '.join(weak)}), {len(tests)} comparisons (α x set); largest: "
           f"{top[0]['teacher']} α={top[0]['alpha']:g} on {top[1]}: gain {fmt(top[2], level)}; "
           f"Bonferroni p = {p_claim:.3g}" if p_claim is not None else "no noise estimate")
    if hurt:
        why += f"; every weak teacher hurts in-domain at every α (largest one-sided p = {p_hurt:.3g})"
    # the control: every weak comparison beyond the control at the same α and set, Bonferroni over
    # them (the best one's own difference alone would be a best-of-many pick)
    control_at: dict = {}  # α -> the control points at it
    for c in kd:
        if c["teacher"] in controls:
            control_at.setdefault(c["alpha"], []).append(c)
    beyond = [(p, s, *beyond_control(fits[s], p, c, e.p_greater()), c["teacher"], e)
              for p, s, e in tests for c in control_at.get(p["alpha"], [])]
    # a weak comparison at an α the control has no point at: said, never silently passed
    missing = sorted({f"no {'/'.join(sorted(controls))} point at α={p['alpha']:g}" for p, _, _ in tests
                      if controls and p["alpha"] not in control_at})
    knowledge = None
    if beyond:
        p_know = bonferroni([pv for _, _, _, pv, _, _ in beyond])
        knowledge = p_know is not None and p_know < 1 - level
        bp, bs, bd, _, bc, _ = max(beyond, key=lambda t: min(t[2].value / t[2].se, t[5].value / t[5].se)
                                   if t[2].se and t[5].se else -math.inf)
        why += (f"; beyond the {bc} control at the same α and set, largest: {bp['teacher']} α={bp['alpha']:g} "
                f"on {bs}: {fmt(bd, level)}, Bonferroni p = " + (f"{p_know:.3g}" if p_know is not None else "n/a"))
    if missing:
        why += "; controls not run: " + "; ".join(missing)
    return {"verdict": None, "null": null, "p": p_claim, "against": [("does not hold", p_hurt)], "why": why,
            "statistic": "max one-sided t over "
            "weak teacher x α x set, Bonferroni", "weak": weak,
            "as_smoothing": None if knowledge is None else not knowledge, "controls_missing": missing}


def claim2(kd, fits, id_set, level, margin, choose=None) -> dict:
    """Each axis's teachers at their own best α (the largest gain on `choose`, the in-domain fit
    by default); the verdict reads the last step (strongest minus next) on the in-domain fit."""
    fit = fits[id_set]
    points_of = by_teacher(kd)
    results = [r for name, ts, xs in teacher_axes(kd)
               if (r := read_axis(name, ts, xs, points_of, fit, choose or fit, level, margin)) is not None]
    tested = [r for r in results if r["tested"]]
    if not results:
        return {"verdict": "not tested", "null": CLAIM2_NULL, "p": None,
                "why": "needs a teacher axis of two or more strengths (one model at 2+ budgets, or 2+ sizes "
                       "at one budget)"}
    if not tested:
        return {"verdict": "not tested", "null": CLAIM2_NULL, "p": None, "axes": results, "untested_by_data": True,
                "why": "a claim about a gain needs a gain: no teacher on any axis helps the student in-domain"}
    p_claim = bonferroni([r["p"] for r in tested])
    # holds through a saturating or reversing axis, against through an axis whose last step still
    # grows (Bonferroni over the axes); both Holm-adjusted over the claims (read_claims): both: mixed
    p_grow = bonferroni([r["last_step"].p_greater() for r in tested])
    why = "; ".join(axis_text(r, level) for r in results)
    return {"verdict": None, "null": CLAIM2_NULL, "p": p_claim, "against": [("does not hold", p_grow)],
            "axes": results, "margin": margin,
            "statistic": f"last step along each axis: reverses (below 0) or saturates (within ±{margin:g}, "
                         "two one-sided tests)", "why": why}


def claim3(kd, zfits, ood_sets, level, fits=None, controls=(), dev_of=None, es_fits=None) -> dict:
    """Primary: the mean over the real teachers' fixed-α points of (OOD gain - in-domain gain) on
    each OOD test set. Controls, where the sweep has them, each needed for "holds" (else "holds as
    smoothing / slowed specialisation"): the best point (chosen on the set's dev twin) below the
    early-stopped baseline on the test set, and its gain beyond the control teacher's at its α."""
    if not ood_sets:
        return {"verdict": "not tested", "null": CLAIM3_NULL, "p": None, "why": "no out-of-distribution validation set"}
    real = [p for p in kd if p["teacher"] not in controls]
    if not real:
        return {"verdict": "not tested", "null": CLAIM3_NULL, "p": None, "why": "no KD point of a real teacher"}
    sets = [read_ood_set(s, real, kd, zfits, level, fits, controls, dev_of, es_fits) for s in ood_sets]
    parts = [part for r in sets for part in r["parts"]]
    missing = [m for r in sets for m in r["missing"]]
    knowledge = [k for r in sets for k in r["knowledge"]]
    if missing:  # a registered control that could not run: said, never silently passed
        parts.append("controls not run: " + "; ".join(missing))
    p_claim = bonferroni([r["mean"].p_greater() for r in sets])
    # against (Holm-adjusted over the claims in read_claims): "mixed", points significantly both
    # ways (Bonferroni over every point and set, each way); "does not hold", every set's mean below 0
    against = [("mixed", both(bonferroni([p for r in sets for p in r["p_ups"]]),
                              bonferroni([p for r in sets for p in r["p_downs"]]))),
               ("does not hold", both(*[r["mean"].p_less() for r in sets]))]
    return {"verdict": None, "null": CLAIM3_NULL, "p": p_claim, "against": against,
            "statistic": "per run: (OOD − in-domain) loss "
            "difference, paired model; the mean over KD points", "why": "; ".join(parts),
            "as_smoothing": (not all(knowledge)) if knowledge else None, "controls_missing": missing}


def claim4(kd, fit, level, strength: dict, n_boot: int, rng) -> dict:
    null = "the best α is unrelated to the teacher's strength"
    ts = sorted(t for t in {p["teacher"] for p in kd} if not math.isnan(strength.get(t, math.nan)))
    if len(ts) < 3:
        return {"verdict": "not tested", "null": null, "p": None, "why": f"needs three teachers, has {len(ts)}"}
    ts_set = set(ts)
    best = best_alpha([p for p in kd if p["teacher"] in ts_set], fit, level)
    alphas = [best[t]["alpha"] for t in ts]
    x = [-strength[t] for t in ts]  # stronger = larger
    if len(set(alphas)) == 1:
        what = "no teacher helps at any α (best α = 0 throughout)" if alphas[0] == 0 else \
            f"every teacher's best α is {alphas[0]:g}"
        return {"verdict": "not tested" if alphas[0] == 0 else "inconclusive", "null": null, "p": None,
                "untested_by_data": True,
                "why": what}
    rho = spearman(x, alphas)
    if rho is None:  # the teachers are equally strong on this set: no order to correlate with
        return {"verdict": "not tested", "null": null, "p": None,
                "why": f"the {len(ts)} teachers' own losses are all equal ({-x[0]:.4f}): no strength order"}
    # permutation p (one-sided, ρ > 0): exact for up to 8 teachers, else 5,000 random orders
    rx, ry = _ranks(np.asarray(x)), _ranks(np.asarray(alphas, dtype=float))
    null_rhos = _permutation_rhos(rx, ry, rng)
    # exact: the observed order is one of the enumerated ones (count / N); sampled: (1 + count) / (1 + N)
    add = 0 if len(ts) <= 8 else 1
    p = float((add + np.sum(null_rhos >= rho - 1e-12)) / (add + len(null_rhos)))
    p_neg = float((add + np.sum(null_rhos <= rho + 1e-12)) / (add + len(null_rhos)))
    # bootstrap over seeds (paired: one draw of seeds for every point) for ρ's interval
    points_of = by_teacher(kd)
    cand = [[(0.0, None)] + [(q["alpha"], q["key"]) for q in points_of[t]] for t in ts]
    n_seeds = len(fit.seeds)
    boot = _bootstrap_rhos(fit, cand, rx, n_boot, rng) if n_seeds >= MIN_BOOTSTRAP_SEEDS else np.array([])
    ci = (float(np.percentile(boot, 100 * (1 - level) / 2)), float(np.percentile(boot, 100 * (1 + level) / 2))) \
        if len(boot) else None
    refused = "" if n_seeds >= MIN_BOOTSTRAP_SEEDS or not n_boot else (
        f"; no bootstrap interval: {n_seeds} seed(s) give {math.comb(2 * n_seeds - 1, n_seeds)} distinct "
        f"resamples, too few for an interval (it needs {MIN_BOOTSTRAP_SEEDS} seeds or more)")
    order = ", ".join(f"{t} {best[t]['alpha']:g}" for t in sorted(ts, key=lambda t: -strength[t]))
    return {"verdict": None, "null": null, "p": p, "against": [("does not hold", p_neg)], "rho": rho,
            "rho_interval": ci,
            "statistic": "Spearman ρ of best α (seed means, α = 0 competing) with strength; permutation p",
            "why": f"best α, weakest first: {order}; ρ = {rho:+.2f}"
                   + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}] (bootstrap over seeds)" if ci else "")
                   + f"; permutation p = {p:.3g}" + refused}


MIN_BOOTSTRAP_SEEDS = 5  # 2 seeds give 3 distinct resamples, 4 give 35: no interval below 5
_CHUNK = 4_000_000  # array elements per step of the resampling loops (memory stays ~32 MB per array)


def _permutation_rhos(rx: np.ndarray, ry: np.ndarray, rng) -> np.ndarray:
    """ρ of every order of the teachers (up to 8) or of 5,000 random orders, drawn in chunks
    (the same random stream as one draw: rows of rng.random come out in order)."""
    n = len(ry)
    if n <= 8:
        return _corr_rows(rx, ry[np.array(list(itertools.permutations(range(n))))])
    step = max(1, _CHUNK // n)
    return np.concatenate([_corr_rows(rx, ry[np.argsort(rng.random((min(step, 5000 - i), n)), axis=1)])
                           for i in range(0, 5000, step)])


def _bootstrap_rhos(fit, cand: list, rx: np.ndarray, n_boot: int, rng) -> np.ndarray:
    """ρ of the best α with strength under seeds resampled (paired: one draw of seeds for every
    point); `cand` holds per teacher its (α, point key) candidates, α = 0 (no KD) first."""
    keys = [fit.baseline] + [k for c in cand for _, k in c[1:]]
    pos = {k: i for i, k in enumerate(keys)}
    m = fit.seed_matrix(keys)
    if not n_boot or m.shape[1] < 2:
        return np.array([])
    idx = rng.integers(0, m.shape[1], (n_boot, m.shape[1]))
    step = max(1, _CHUNK // m.size)
    means = np.concatenate([_seed_means(m[:, idx[i:i + step]]) for i in range(0, n_boot, step)],
                           axis=1)  # [point, draw]
    gains = means[0] - means  # [point, draw]
    picks = np.stack([np.array([a for a, _ in c])[np.argmax(np.stack(
        [np.zeros(n_boot)] + [gains[pos[k]] for _, k in c[1:]]), axis=0)] for c in cand], axis=1)
    from scipy.stats import rankdata

    r = _corr_rows(rx, rankdata(picks, axis=1).astype(float))
    return r[~np.isnan(r)]


def _seed_means(x: np.ndarray) -> np.ndarray:
    """The mean over the last axis (resampled seeds) of the finite values, NaN where a point has
    none in a draw: np.nanmean's "Mean of empty slice" warning is a Python warning that
    np.errstate does not silence."""
    counts = np.sum(~np.isnan(x), axis=-1)
    return np.where(counts > 0, np.nansum(x, axis=-1) / np.maximum(counts, 1), np.nan)


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's ρ needs."""
    from scipy.stats import rankdata

    return rankdata(v).astype(float)


def _corr_rows(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson correlation of `rx` with each row of `ry` (NaN where a row is constant)."""
    a = rx - rx.mean()
    b = ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((a ** 2).sum() * (b ** 2).sum(axis=1))
    with np.errstate(all="ignore"):
        return np.where(den > 0, (b @ a) / np.where(den > 0, den, 1.0), np.nan)


def read_claims(kd: list[dict], fits: dict, zfits: dict, baseline_id, id_set: str, ood_sets: list[str],
                level: float = 0.95, margin: float = 0.01, n_boot: int = 1000, seed: int = 0,
                controls=(), dev_of: dict | None = None, es_fits: dict | None = None,
                primary: dict | None = None) -> list[dict]:
    """[{claim, verdict, null, statistic, p, p_holm, why, ...}] for the four claims (fixed-α
    points only: `kd` holds one dict per point with key, teacher, alpha, teacher_val, ...).
    `ood_sets` are the sets verdicts read (no dev set among them); `dev_of` maps a test set to
    its dev twin, `controls` names the control teachers, `es_fits` holds per test set the fit
    with the early-stopped baseline as point ES_KEY (analysis.analyse builds them). `primary`: a
    sweep's `primary:` block (primary.py; default: the one `primary.registered` holds, if any): a
    registered claim is read through its one contrast (claims_primary.py)."""
    rng = np.random.default_rng(seed)
    real = [p for p in kd if p["teacher"] not in controls]
    strength = {p["teacher"]: p["teacher_val"].get(id_set, math.nan) for p in real}
    reg = _registered(primary, kd, fits, id_set, ood_sets, controls, dev_of)
    sets = [id_set, *ood_sets]
    out = {1: claim1_registered(kd, fits, baseline_id, id_set, sets, level, controls, reg[1]) if 1 in reg
           else claim1(kd, fits, baseline_id, id_set, sets, level, controls),
           2: claim2_registered(real, fits, id_set, level, margin, reg[2]) if 2 in reg
           else claim2(real, fits, id_set, level, margin),
           3: claim3_registered(kd, zfits, ood_sets, level, fits, controls, dev_of, es_fits, reg[3]) if 3 in reg
           else claim3(kd, zfits, ood_sets, level, fits, controls, dev_of, es_fits),
           4: claim4(real, fits[id_set], level, strength, n_boot, rng)}
    # Holm over the claims the design can test: a claim left untested by the data (no gain to
    # follow, one best α throughout) still counts, as p = 1, or which claims enter would depend
    # on the noise and the others' level rise with it (mkd power assumes the same count)
    def counted(c, p):
        return p if p is not None else 1.0 if c.get("untested_by_data") else None
    adjusted = holm({k: counted(c, c["p"]) for k, c in out.items()})
    against = holm({k: counted(c, _against(c)[1]) for k, c in out.items()})  # the directional verdicts
    for k, c in out.items():
        c["claim"] = k
        c["p_holm"] = adjusted.get(k) if c["p"] is not None else None
        c["p_against"] = _against(c)[1]
        c["p_against_holm"] = against.get(k) if c["p_against"] is not None else None
        if c["verdict"] is None:
            c["verdict"] = _verdict(k, c, level)
    return [out[k] for k in sorted(out)]


def _registered(primary, kd, fits, id_set, ood_sets, controls, dev_of) -> dict[int, dict]:
    """{claim: its registered entry}, the names checked against these runs (one line on an
    unknown teacher, α or set); {} when nothing is registered."""
    primary, source = (primary, "primary") if primary is not None else (current() or (None, ""))
    if not primary:
        return {}
    reg = parse_primary(primary, source)
    check_names(reg, source, {p["teacher"] for p in kd}, controls,
                alphas={p["alpha"] for p in kd if p["teacher"] not in controls}, verdict_sets=[id_set, *ood_sets],
                ood_sets=ood_sets, dev_sets=(dev_of or {}).values())
    return reg


def _against(c: dict) -> tuple[str | None, float | None]:
    """(the directional verdict, its p): of a claim's candidates ("does not hold", "mixed"), the
    one of smallest p, Bonferroni over the candidates."""
    cands = [(v, p) for v, p in c.get("against", []) if p is not None]
    if not cands:
        return None, None
    v, p = min(cands, key=lambda t: t[1])
    return v, min(1.0, p * len(cands))


def _verdict(k: int, c: dict, level: float) -> str:
    """holds / does not hold / mixed / inconclusive: "holds" and the directional verdicts each
    need their Holm-adjusted p below 1 - level; both significant: mixed."""
    holds = c["p_holm"] is not None and c["p_holm"] < 1 - level
    direction = _against(c)[0] if c["p_against_holm"] is not None and c["p_against_holm"] < 1 - level else None
    if direction is not None:
        return "mixed" if holds or direction == "mixed" else direction
    if not holds:
        return "inconclusive"
    if c.get("as_smoothing"):
        return {1: "holds as smoothing", 3: "holds as smoothing / slowed specialisation"}.get(k, "holds")
    return "holds" + (" (controls not run)" if c.get("controls_missing") else "")
