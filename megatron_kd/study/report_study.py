"""The study's sections of report.md: the paired gains per point, the best α per teacher, the α
schedules, the controls and the four claims, rendered from analysis.analyse's results (the
statistics are analysis.py's, claims.py's and paired.py's; this module only writes them)."""

from __future__ import annotations

import math

from megatron_kd.models.params import human
from megatron_kd.study.analysis import alpha_label, pairs_by_seed, schedule_rows
from megatron_kd.study.claims import CLAIMS, ES_KEY
from megatron_kd.study.report_output import md_text


def _ci(ci, nd: int = 4) -> str:
    return f" [{ci[0]:+.{nd}f}, {ci[1]:+.{nd}f}]" if ci else ""


def markdown(a: dict, sets: list[str]) -> list[str]:
    """The study's sections of report.md (every name from the table or sweep through md_text)."""
    md = []
    for student, st in a["students"].items():
        md += _gains_section(md_text(student), st, sets, a["level"])
        md += _claims_section(md_text(student), st, a)
    return md


def _gains_section(student: str, st: dict, sets: list[str], level: float) -> list[str]:
    """The paired gains per point, the best α per teacher, the schedules, the controls."""
    pct = f"{100 * level:g} %"
    md = []
    unpaired = [s for s in sets if not pairs_by_seed(st["fits"][s])]
    md += ["", f"## Paired gains ({student})", "",
           f"Gain = the baseline's loss minus the point's, paired by seed (the same initialisation and data "
           f"order) and estimated by a point × seed model over every run of the student; intervals are "
           f"{pct} two-sided, from the t distribution at the model's degrees of freedom. It is the per-run "
           f"table's gain: with every seed at every point, a point's gain here is the mean of its runs' "
           f"gains there (otherwise the model's estimate, each seed's effect read from every point that "
           f"has it). Each comparison "
           f"family (fixed α, scheduled α, controls, frontier baselines) has its own residual sd, from its "
           f"runs and the baseline's; a contrast across families is weighted by them. Noise per set:", ""]
    for s, n in st["noise"].items():
        md.append(f"- {md_text(s)}: " + (f"residual sd {n['sigma']:.4f}; " if n["sigma"] else "") + n["source"])
    head = ["teacher", "α", "T", "seeds"] + [f"loss {md_text(s)}" for s in sets] + \
        [f"gain {md_text(s)}" + (" †" if s in unpaired else "") for s in sets]
    md += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in sorted(st["points"], key=lambda p: (str(p["teacher"]), p.get("alpha") or 0, alpha_label(p))):
        g = [(f"{p['gains'][s]['gain']:+.4f}{_ci(p['gains'][s]['interval'])} ({p['gains'][s]['verdict']})")
             if p["teacher"] and not math.isnan(p["gains"][s]["gain"]) else "" for s in sets]
        name = p["teacher"] or ("(baseline)" if p.get("baseline_tokens") is None
                                else f"(baseline, {human(p['baseline_tokens'])} tokens)")
        md.append("| " + " | ".join([md_text(name), md_text(alpha_label(p)),
                                     f"{p['temperature']:g}" if p.get("temperature") else "", str(p["seeds"])]
                                    + [f"{p['mean'][s]:.4f}" for s in sets] + g) + " |")
    if unpaired:
        md += ["", f"† Not paired on {', '.join(map(md_text, unpaired))}: the point × seed model has no residual "
                   "degrees of freedom there and one baseline seed, so no noise estimate; a gain is the "
                   "baseline's loss minus the point's mean, as in the per-run table's † cells."]
    md += ["", "Best α per teacher, from seed means (α = 0, no KD, competes; the interval is that of the "
               "chosen point and, as the best of several, optimistic):", ""]
    for t in sorted({p["teacher"] for p in st["points"] if p["teacher"]}):
        md.append(f"- {md_text(t)}: " + "; ".join(
            f"{md_text(s)}: α={v[t]['alpha']:g} (gain {v[t]['gain']:+.4f}{_ci(v[t]['interval'])})"
            for s, v in st["best_alpha"].items() if t in v))
    sched = schedule_rows(st, level)
    if sched:
        md += ["", "α schedules against the same teacher's best fixed α (paired difference of the two "
                   "points; the constant is the best of several, which favours it):", ""]
        for r in sched:
            md.append(f"- {md_text(r['teacher'])}, α {md_text(r['schedule'])}: " + "; ".join(
                f"{md_text(s)}: {v['gain']:+.4f} vs {v['best_fixed_gain']:+.4f} at α={v['best_fixed_alpha']:g}, "
                f"difference {v['diff']:+.4f}{_ci(v['interval'])} ({v['verdict']})" for s, v in r["sets"].items()))
    md += ["", "No student-vs-teacher law is fitted here: per α the sweep has one loss per teacher, too few "
               "to identify a saturating form's parameters with intervals, and a quadratic can predict a "
               "negative loss. The distillation-law fit belongs to `mkd advise` (study v3).", ""]
    for test, e in st.get("early_stopped", {}).items():
        fit = e["fit"]
        md += ["", f"Early-stopped baseline on {md_text(test)}: each baseline seed at its lowest "
                   f"{md_text(e['dev'])} loss "
                   f"(at {', '.join(human(t) for _, t in e['steps'].values())} tokens): {md_text(test)} loss "
                   f"{fit.mean(ES_KEY):.4f}, against {fit.mean(st['baseline']):.4f} at the end. Claim 3's "
                   f"control: the best teacher has to beat it."]
    if st.get("controls"):
        md += ["", f"Control teacher(s) {', '.join(map(md_text, st['controls']))} (no parameters: token "
                   "frequencies only): not teachers of the claims; a gain counts as knowledge only beyond theirs."]
    return md


def _claims_section(student: str, st: dict, a: dict) -> list[str]:
    """The four claims as tests, with their verdicts."""
    level = a["level"]
    md = []
    md += ["", f"## The paper's claims ({student})", "",
           f"Each claim as a test: its null hypothesis, its statistic, and “holds” only when the primary "
           f"test's p-value, Holm-adjusted over the claims tested, is below {1 - level:g}; “does not hold” "
           f"and “mixed” need their own p (“against”), Holm-adjusted the same way. Claim 2 reads "
           f"“saturates” only through an equivalence test (±{a['equivalence']:g} nats)."
           + (" “Holds as smoothing” (claims 1 and 3): the primary test holds but a gain does not "
              "beat a control (the control teacher at the same α, or, for claim 3, the early-stopped "
              "baseline), so it is not evidence of the teacher's knowledge." if st.get("controls") else ""),
           ""]
    for c in st["claims"]:
        ps = (f" (p = {c['p']:.3g}, Holm {c['p_holm']:.3g}" if c.get("p") is not None else "")
        if c.get("p_against") is not None:  # the directional verdicts' test, Holm-adjusted the same way
            ps += ("; " if ps else " (") + f"against: p = {c['p_against']:.3g}, Holm {c['p_against_holm']:.3g}"
        ps += ")" if ps else ""
        md.append(f"{c['claim']}. {CLAIMS[c['claim']]}: **{c['verdict']}**{ps} — null: {c['null']}. "
                  f"{md_text(c['why'])}")
    return md
