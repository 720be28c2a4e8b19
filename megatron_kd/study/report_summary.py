"""What `mkd report` prints: one screen (SCREEN_LINES at most) — the headline per student (how
many KD points help, hurt or are within noise in-domain, and the best), one line per claim
verdict, the compute answer, and the files written. The full report is report.md."""

from __future__ import annotations

from collections import Counter

from megatron_kd.study.compute import ACCOUNTINGS
from megatron_kd.study.report_auto import summary_line
from megatron_kd.study.report_style import alpha_text

SCREEN_LINES = 25
STUDENTS = 3  # students summarised on the console; the others are in report.md
CLAIM_NAMES = {1: "weak teachers help", 2: "more teacher saturates the gain", 3: "KD helps OOD more than in-domain",
               4: "best α grows with the teacher"}


def _headline(st: dict, id_set: str, pct: str) -> str:
    kd = [p for p in st["points"] if p["teacher"] and id_set in p["gains"]]
    if not kd:
        return "no KD point"
    verdicts = Counter(p["gains"][id_set]["verdict"] for p in kd)
    words = {"helps": "help", "hurts": "hurt", "within noise": "within noise", "unknown": "no interval"}
    counts = ", ".join(f"{verdicts[v]} {w}" for v, w in words.items() if verdicts[v])
    scored = [p for p in kd if p["gains"][id_set]["gain"] == p["gains"][id_set]["gain"]]  # NaN: no pairing
    line = f"{len(kd)} KD points on {id_set} ({pct} intervals): {counts}"
    if scored:
        best = max(scored, key=lambda p: p["gains"][id_set]["gain"])
        g = best["gains"][id_set]
        ci = f" [{g['interval'][0]:+.4f}, {g['interval'][1]:+.4f}]" if g["interval"] else ""
        line += f"; best {best['teacher']} α={alpha_text(best)}: {g['gain']:+.4f}{ci}"
    return line


def _claim(c: dict) -> str:
    ps = [f"Holm p = {c['p_holm']:.3g}"] if c.get("p_holm") is not None else []
    if c.get("p_against_holm") is not None:  # the p of the directional verdicts (does not hold, mixed)
        ps.append(f"against: {c['p_against_holm']:.3g}")
    p = f" ({'; '.join(ps)})" if ps else ""
    return f"  claim {c['claim']}, {CLAIM_NAMES.get(c['claim'], '')}: {c['verdict']}{p}"


def _compute(c: dict | None, id_set: str) -> list[str]:
    if not c or not c["points"]:
        return ["  compute: no KD point to price"]
    out = []
    for k in ("b", "c"):
        tally = Counter(a["verdict"] for a in c["answers"][id_set][k])
        out.append(f"  compute ({k}, {ACCOUNTINGS[k].split(' (')[0]}): "
                   + ", ".join(f"{v} {n}" for v, n in tally.most_common()))
    return out


def summary_lines(rep: dict) -> list[str]:
    """The console summary of a written report (build_report's or build_report_from_table's
    result)."""
    study, where = rep["study"], rep["out_dir"]
    id_set, pct = study["id_set"], f"{100 * study['level']:g} %"
    lines = [f"{rep['title']}: {len(rep['rows'])} runs; in-domain {id_set}"
             + (f", OOD {', '.join(study['ood_sets'])}" if study["ood_sets"] else "")]
    students = list(study["students"].items())
    if not students:
        lines.append("no student has a no-KD baseline: no paired gains, claims or compute answer")
    blocks = [[f"{student}: {_headline(st, id_set, pct)}", *[_claim(c) for c in st["claims"]],
               *[line for line in [summary_line(st)] if line], *_compute(rep["compute"].get(student), id_set)]
              for student, st in students[:STUDENTS]]
    tail = 2 + bool(rep.get("left_out"))
    shown = len(blocks)  # as many students as the screen holds (at least one), the rest in report.md
    while shown > 1 and len(lines) + sum(map(len, blocks[:shown])) + tail + (shown < len(students)) > SCREEN_LINES:
        shown -= 1
    for block in blocks[:shown]:
        lines += block
    if len(students) > shown:
        more = len(students) - shown
        lines.append(f"... and {more} more student{'s' if more > 1 else ''} (report.md)")
    if rep.get("left_out"):
        lines.append(f"{len(rep['left_out'])} run(s) with a non-finite loss left out of the figures (report.md)")
    lines.append(f"full report: {where / 'report.md'}")
    figures = ", ".join(p.name for p in rep["plots"])
    lines.append("also written: report.json, report.csv" + (f"; figures: {figures}" if figures else ""))
    return lines
