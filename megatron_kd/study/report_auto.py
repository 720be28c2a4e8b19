"""The report's kd.auto section: the registered test of auto_test.py as report.md lines, its
report.json entry and its console line, with the compute each teacher's grid spent against the
one kd.auto run. Present only where a student has kd.auto points (a sweep without them reports
exactly as before)."""

from __future__ import annotations

import statistics

from megatron_kd.models.params import human
from megatron_kd.study.auto_test import grid_compute
from megatron_kd.study.compute import ACCOUNTINGS, totals
from megatron_kd.study.report_output import md_text
from megatron_kd.study.rows import RunRow

ACCOUNTING = "b"  # the one the table shows: the teacher exists, its pass serves this run alone
TEACHER_FIELDS = ("teacher", "reference_alpha", "reference_loss", "auto_loss", "seeds", "d", "se", "df", "upper",
                  "mde", "margin", "not_worse", "p_worse", "p_worse_holm", "secondary", "compute")


def attach_compute(study: dict, cs: dict, rows: list[RunRow]) -> None:
    """Each student's kd.auto test gains the compute per teacher (auto_test.grid_compute)."""
    for student, st in study["students"].items():
        if not st.get("auto") or student not in cs:
            continue
        base = [totals(r) for r in rows if r.student == student and not r.teacher
                and r.baseline_tokens is None]
        base_compute = {k: (statistics.fmean(b[k] for b in base) if base and all(b[k] is not None for b in base)
                            else None) for k in ACCOUNTINGS}
        per_teacher = grid_compute(st["auto"], cs[student]["points"], base_compute)
        for r in st["auto"]["teachers"]:
            r["compute"] = per_teacher.get(r["teacher"])


def report_json(st: dict) -> dict:
    a = st["auto"]
    return {**{k: a[k] for k in ("set", "margin_floor", "sigma", "df", "one_sided", "registered", "verdict")},
            "teachers": [{k: r.get(k) for k in TEACHER_FIELDS} for r in a["teachers"]]}


def _num(x, fmt: str = "+.4f") -> str:
    return "—" if x is None or x != x else format(x, fmt)


def _flops(c: dict | None, k: str = ACCOUNTING) -> tuple[str, str, str]:
    if not c or c[k]["grid"] is None or c[k]["auto"] is None:
        return "—", "—", "—"
    g, a = c[k]["grid"], c[k]["auto"]
    return human(g), human(a), (f"{g / a:.1f}×" if a else "—")


def markdown(study: dict) -> list[str]:
    """report.md's kd.auto section, per student with kd.auto points."""
    md = []
    for student, st in study["students"].items():
        a = st.get("auto")
        if not a:
            continue
        s = md_text(a["set"])
        md += ["", f"## kd.auto against the grid ({md_text(student)})", "",
               ("The registered test (the sweep's `primary.auto`): " if a["registered"] else "The kd.auto test: ")
               + f"for each teacher the reference is its best grid point on {s} by seed mean, α = 0 (the baseline) "
               f"competing; d = the paired (auto − reference) {s} loss over seeds (positive: auto worse), its SE from "
               f"the fixed-α family's residual sd ({_num(a['sigma'], '.4f')}, {a['df']} degrees of freedom); margin "
               f"m = max({a['margin_floor']:g}, the per-point MDE at 80 % power, one-sided α = {a['one_sided']:g}); "
               f"not worse when the one-sided {100 * (1 - a['one_sided']):g} % upper bound of d is below m. "
               "Auto matches the grid when every teacher is not worse (intersection–union, no correction); "
               f"it does not when for some teacher d > 0 at one-sided p < {a['one_sided']:g} after Holm over the "
               "teachers; otherwise inconclusive. The reference is chosen on the data it is tested on, which "
               "favours the grid.", "", f"**Verdict: {a['verdict']}.**", ""]
        head = ["teacher", "reference α", f"reference {s}", f"auto {s}", "seeds", "d", "SE", "upper bound", "margin",
                "p (d > 0)", "Holm p", "not worse", "grid FLOPs", "auto FLOPs", "grid / auto"]
        md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in a["teachers"]:
            md.append("| " + " | ".join([
                md_text(r["teacher"]), f"{r['reference_alpha']:g}", _num(r["reference_loss"], ".4f"),
                _num(r["auto_loss"], ".4f"), str(r["seeds"]), _num(r["d"]), _num(r["se"], ".4f"), _num(r["upper"]),
                _num(r["margin"], ".4f"), _num(r["p_worse"], ".3g"), _num(r["p_worse_holm"], ".3g"),
                "yes" if r["not_worse"] else "no", *_flops(r.get("compute"))]) + " |")
        md += ["", f"Compute ({ACCOUNTINGS[ACCOUNTING]}): one seed's runs of a teacher's grid (its fixed-α points "
                   "and the baseline) against one kd.auto run."]
        second = [(r, o, v) for r in a["teachers"] for o, v in r["secondary"].items()]
        if second:
            md += ["", "Secondary (auto − the same reference on the other verdict sets; intervals "
                       f"{100 * study['level']:g} % two-sided, uncorrected):", ""]
            for r in a["teachers"]:
                md.append(f"- {md_text(r['teacher'])}: " + "; ".join(
                    f"{md_text(o)} {_num(v['d'])}" + (f" [{v['interval'][0]:+.4f}, {v['interval'][1]:+.4f}]"
                                                     if v["interval"] else "")
                    for o, v in r["secondary"].items()))
    return md


def summary_line(st: dict) -> str | None:
    """The console's line for a student's kd.auto test (None without one)."""
    a = st.get("auto")
    if not a:
        return None
    rows = a["teachers"]
    margins = [r["margin"] for r in rows if r["margin"] is not None]
    said = f"{sum(r['not_worse'] for r in rows)} of {len(rows)} teachers not worse"
    if margins:
        low, high = f"{min(margins):.3f}", f"{max(margins):.3f}"
        said += f", margin {low}" + (f"–{high}" if high != low else "")
    return f"  kd.auto against the grid: {a['verdict']} ({said})"
