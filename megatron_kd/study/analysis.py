"""The study's statistics in `mkd report`: paired gains per point (paired.py), best α from seed
means, the α schedules against the best fixed α, the four claims as stated tests (claims.py),
the kd.auto test (auto_test.py), and the one definition of a gain that the report's tables share
(pairs_by_seed). Pure functions of the report's rows: tested on synthetic sweeps; report.md's
sections are report_study.py's, the figures report_figures.py's."""

from __future__ import annotations

import math

from megatron_kd.errors import ConfigError
from megatron_kd.study.auto_test import auto_test
from megatron_kd.study.claims import ES_KEY, best_alpha, read_claims
from megatron_kd.study.paired import PairedFit
from megatron_kd.study.primary import current, parse_auto
from megatron_kd.study.rows import RunRow
from megatron_kd.study.stats import AUTO_FAMILY, is_auto

ID_SETS = ("indomain", "heldout", "mock")
LEVEL = 0.95
EQUIVALENCE = 0.01  # nats: a difference of gains below this counts as none (claim 2's margin)


def split_sets(sets: list[str], in_domain: str | None = None) -> tuple[str, list[str]]:
    """(the in-domain set, the out-of-distribution ones): `in_domain` if given, else
    `indomain`, `heldout` or `mock` if present (else the first); every other set OOD."""
    id_set = in_domain or next((s for s in ID_SETS if s in sets), sets[0])
    return id_set, [s for s in sets if s != id_set]


def test_sets(ood: list[str]) -> tuple[list[str], dict]:
    """(the OOD sets verdicts read, {test set: its dev twin}): a `X_dev` set beside `X_test` is
    for choices (best α, best teacher, the early-stopping step) and reads no verdict."""
    dev_of = {s: s[:-5] + "_dev" for s in ood if s.endswith("_test") and s[:-5] + "_dev" in ood}
    return [s for s in ood if s not in dev_of.values()], dev_of


def early_stopped(base_rows: list[RunRow], dev: str, test: str) -> dict:
    """{seed key: (test loss, tokens)}: each baseline run at its evaluation of lowest `dev` loss
    (from its validation curve; a results table has none, and then this is empty)."""
    out = {}
    for r in base_rows:
        curve = [v for v in r.curve if f"val/{dev}" in v and f"val/{test}" in v
                 and math.isfinite(v[f"val/{dev}"])]
        if curve:
            best = min(curve, key=lambda v: v[f"val/{dev}"])
            out[r.seed_key] = (float(best[f"val/{test}"]), int(best["tokens"]))
    return out


def is_control(p: dict) -> bool:
    """A point whose teacher has no parameters (the unigram): a control, not a teacher of the
    claims (a run's row says it itself: RunRow.is_control)."""
    return bool(p.get("teacher")) and p.get("teacher_params") == 0


def _cells(rows: list[RunRow], value) -> dict:
    cells: dict = {}
    for r in rows:
        v = value(r)
        if v is not None:
            cells.setdefault(r.point_key, {})[r.seed_key] = v
    return cells


def comparison_family(r: RunRow) -> str | None:
    """The noise family of a run's point (paired.PairedFit's `families`): the baseline (None)
    belongs to every family; the others each have their own residual variance."""
    if r.baseline_tokens is not None:
        return "frontier baselines"
    if not r.teacher:
        return None
    if r.is_control:
        return "controls"
    if r.is_auto:
        return AUTO_FAMILY
    return "scheduled α" if r.alpha_schedule else "fixed α"


def pairs_by_seed(fit: PairedFit) -> bool:
    """Whether a fit's gains are paired by seed. Its point x seed model pairs when it has a noise
    estimate: residual degrees of freedom, or else (one seed per KD point, as in the demo) the
    baselines' seed spread standing for sigma beside the exact fit's same-seed gains. With
    neither (one baseline seed) its `source` says so and the per-run table marks its gains, so
    that a run shows the same reading in both tables."""
    return fit.source.startswith("paired")


def _verdict(e, level: float) -> str:
    ci = e.interval(level)
    if ci is None:
        return "unknown"
    return "helps" if ci[0] > 0 else "hurts" if ci[1] < 0 else "within noise"


def analyse(rows: list[RunRow], sets: list[str], level: float = LEVEL, equivalence: float = EQUIVALENCE,
            in_domain: str | None = None, n_boot: int = 1000) -> dict:
    id_set, ood = split_sets(sets, in_domain)
    out = {"id_set": id_set, "ood_sets": ood, "level": level, "equivalence": equivalence, "students": {}}
    for student in sorted({r.student for r in rows}):
        rs = [r for r in rows if r.student == student]
        base_rows = [r for r in rs if not r.teacher and r.baseline_tokens is None]
        if not base_rows:
            continue
        baseline = base_rows[0].point_key
        fam = {r.point_key: comparison_family(r) for r in rs}
        fits = {s: PairedFit(_cells(rs, lambda r, s=s: r.val.get(s)), baseline, fam) for s in sets}
        zfits = {s: PairedFit(_cells(rs, lambda r, s=s: (r.val[s] - r.val[id_set])
                                     if s in r.val and id_set in r.val else None), baseline, fam) for s in ood}
        runs_of: dict = {}  # point key -> its runs, grouped once (a search per point is quadratic)
        for r in rs:
            runs_of.setdefault(r.point_key, []).append(r)
        points = []
        for key in sorted(runs_of, key=repr):
            first = runs_of[key][0]
            p = {"key": key, "student": student, "teacher": first.teacher, "alpha": first.alpha,
                 "alpha_schedule": first.alpha_schedule, "auto_ceiling": first.auto_ceiling,
                 "temperature": first.temperature,
                 "kind": first.kind, "teacher_val": dict(first.teacher_val),
                 "teacher_tokens": first.teacher_tokens, "teacher_params": first.teacher_params,
                 "teacher_model": first.teacher_model, "teacher_flops": first.teacher_pretrain_flops,
                 "baseline_tokens": first.baseline_tokens, "seeds": fits[id_set].n_seeds(key),
                 "names": [r.name for r in runs_of[key]],
                 "mean": {s: fits[s].mean(key) for s in sets}, "gains": {}}
            if p["teacher"]:
                for s in sets:
                    e = fits[s].gain(key)
                    ci = e.interval(level)
                    p["gains"][s] = {"gain": e.value, "se": e.se, "df": e.df, "interval": ci,
                                     "p": e.p_two_sided(), "verdict": _verdict(e, level)}
            points.append(p)
        kd = [p for p in points if p["teacher"] and p.get("alpha") is not None]
        verdict_ood, dev_of = test_sets(ood)
        es, es_fits = {}, {}
        for test, dev in dev_of.items():
            es[test] = early_stopped(base_rows, dev, test)
            if es[test]:
                cells = {**_cells(rs, lambda r, s=test: r.val.get(s)),
                         ES_KEY: {k: v for k, (v, _) in es[test].items()}}
                es_fits[test] = PairedFit(cells, baseline, fam)  # ES_KEY: shared, like the baseline
        controls = sorted({p["teacher"] for p in kd if is_control(p)})
        st = out["students"][student] = {
            "baseline": baseline, "fits": fits, "zfits": zfits, "points": points,
            "noise": {s: {"sigma": f.sigma, "df": f.df, "source": f.source,
                          **(f.families.summary() if f.families and f.families.active else {})}
                      for s, f in fits.items()},
            "best_alpha": {s: best_alpha(kd, fits[s], level) for s in sets},
            "early_stopped": {t: {"dev": dev_of[t], "steps": v, "fit": es_fits.get(t)} for t, v in es.items() if v},
            "controls": controls,
            "claims": read_claims(kd, fits, zfits, baseline, id_set, verdict_ood, level, equivalence, n_boot,
                                  controls=controls, dev_of=dev_of, es_fits=es_fits)}
        st["auto"] = auto_test(st, id_set, verdict_ood, level, registered_auto(sets), controls)
    return out


def registered_auto(sets: list[str]) -> dict | None:
    """The registered kd.auto test's entry (primary.auto of the block `primary.registered` holds),
    its set checked against these runs' sets; None when none is registered."""
    block, source = current() or (None, "")
    entry = parse_auto(block, source)
    if entry is not None and entry["set"] not in sets:
        raise ConfigError(f"{source}: primary.auto's set {entry['set']!r} is not a validation set of these runs "
                          f"({', '.join(sets)[:300]})")
    return entry


def alpha_label(p: dict) -> str:
    """A point's α as the tables print it: the value, its schedule, or `auto` (kd.auto)."""
    if is_auto(p):
        return "auto"
    if p.get("alpha_schedule"):
        return p["alpha_schedule"]
    return f"{p['alpha']:g}" if p.get("alpha") is not None else ""


def schedule_rows(st: dict, level: float) -> list[dict]:
    """Each scheduled-α point against its teacher's best fixed α by seed means (the "proper
    balancing" question), per set: the paired difference of the two points with its interval."""
    out = []
    kd = [p for p in st["points"] if p["teacher"]]
    for p in kd:
        if not p.get("alpha_schedule"):
            continue
        row = {"teacher": p["teacher"], "schedule": p["alpha_schedule"], "sets": {}}
        for s, fit in st["fits"].items():
            fixed = [q for q in kd if q["teacher"] == p["teacher"] and q.get("alpha") is not None]
            if not fixed:
                continue
            top = max(fixed, key=lambda q: fit.gain(q["key"]).value)
            d = fit.contrast({top["key"]: 1.0, p["key"]: -1.0})
            row["sets"][s] = {"gain": fit.gain(p["key"]).value, "best_fixed_alpha": top["alpha"],
                              "best_fixed_gain": fit.gain(top["key"]).value, "diff": d.value,
                              "interval": d.interval(level), "verdict": {"helps": "better", "hurts": "worse"}.get(
                                  _verdict(d, level), _verdict(d, level))}
        out.append(row)
    return out
