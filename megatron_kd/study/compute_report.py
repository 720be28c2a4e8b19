"""The report's section "Is distillation worth its compute here?" (compute.py's numbers as
Markdown, report.json and a figure: loss against total compute with the frontier and the KD
points)."""

from __future__ import annotations

import math
from pathlib import Path

from megatron_kd.models.params import human
from megatron_kd.study.compute import ACCOUNTINGS, GAIN_ACCOUNTINGS
from megatron_kd.study.report_output import figure_text, md_text, plain_text_figures
from megatron_kd.study.report_style import SIGNIFICANT, Style, fill_handles, log_axis, points, save, spread, subplots
from megatron_kd.study.stats import is_auto

LABELLED = 30  # up to this many KD points of a panel carry their teacher's name


def _alpha(q: dict) -> str:
    if is_auto(q):
        return "auto"
    return q.get("alpha_schedule") or (f"{q['alpha']:g}" if q.get("alpha") is not None else "")


def _points_by_teacher_alpha(points: list[dict]) -> dict:
    """{(teacher, α label): the first such point} (a lookup per answer, not a search)."""
    out: dict = {}
    for p in points:
        out.setdefault((p["teacher"], _alpha(p)), p)
    return out


def _gain(g: dict, nd: int = 3) -> str:
    if g["gain"] is None:
        return g["verdict"]
    bound = {"at most": "≤ ", "at least": "≥ "}.get(g["kind"], "")
    ci = f" [{g['interval'][0]:+.{nd}f}, {g['interval'][1]:+.{nd}f}]" if g["interval"] else ""
    return f"{bound}{g['gain']:+.{nd}f}{ci} ({g['verdict']})"


def _tally(answers: list[dict]) -> str:
    names = {}
    for a in answers:
        names.setdefault(a["verdict"], []).append(a["teacher"])
    order = ["worth it", "not worth it", "within noise", "beyond the frontier", "below the frontier",
             "no noise estimate", "no frontier"]
    return "; ".join(f"{v}: {len(names[v])} ({', '.join(map(md_text, names[v]))})" for v in order if v in names)


def markdown(cs: dict, sets: list[str], level: float, id_set: str) -> list[str]:
    pct = f"{100 * level:g} %"
    md = []
    for student, c in cs.items():
        student = md_text(student)
        md += ["", f"## Is distillation worth its compute here? ({student})", "",
               "Would the compute a KD run spends have bought a lower loss spent on the student's own "
               "supervised training? Total FLOPs per run (6·N·D training, 2·N·D a teacher's forward; N: "
               "matmul weights + output layer + attention, as `mkd fit` and `mkd advise` count), under "
               "three accountings:", ""]
        md += [f"- ({k}) {v}" for k, v in ACCOUNTINGS.items()]
        md += ["", f"The supervised frontier is {student}'s loss against its own training FLOPs from every run "
                   "that trains it without KD: its baselines (per length; add `baseline_steps: [...]` to the "
                   "sweep for more) and teacher-zoo runs of the same model. At each compute it is the best "
                   "loss measured at that compute or less, joined in log-log, never extrapolated: beyond its "
                   "largest compute a gain is an upper bound (≤), below its smallest a lower bound (≥). "
                   "Compute-matched gain = the frontier's loss at the point's total compute minus the point's "
                   f"loss ({pct} intervals; each run's "
                   "noise is the seed spread pooled over the student's replicated points, unpaired).", ""]
        for s in sets:
            info = c["sets"][s]
            noise = (f"per-run sd {info['sd']:.4f} ({info['df']} degrees of freedom)" if info["sd"] is not None
                     else "no per-run noise estimate (no point has two seeds)")
            md.append(f"Frontier on {md_text(s)} ({noise}): " + "; ".join(
                f"{md_text(n['label'])} {human(n['compute'])}FLOP → {n['loss']:.4f}"
                + (f" (frontier {n['frontier']:.4f})" if abs(n["frontier"] - n["loss"]) > 1e-12 else "")
                for n in info["nodes"]) + ("" if info["nodes"] else "none"))
        if not c["points"]:
            continue
        for s in sets:
            label = f"{md_text(s)} (in-domain)" if s == id_set else f"{md_text(s)} (OOD)"
            md += ["", f"**{label}**, each teacher at its best α by seed means (the best of several, so "
                       "optimistic for KD):", "",
                   "| teacher | α | (a) FLOPs | (b) FLOPs | (c) FLOPs | gain at (b) | gain at (c) |",
                   "|---|---|---|---|---|---|---|"]
            by = {a["teacher"]: a for a in c["answers"][s]["b"]}
            point_of = _points_by_teacher_alpha(c["points"])
            for a_c in c["answers"][s]["c"]:
                a_b = by[a_c["teacher"]]
                q = point_of[a_c["teacher"], _alpha(a_c)]
                md.append(f"| {md_text(a_c['teacher'])} | {md_text(_alpha(a_c))} | " + " | ".join(
                    human(q["compute"][k]) if q["compute"][k] is not None else "?" for k in ACCOUNTINGS)
                    + f" | {_gain(a_b)} | {_gain(a_c)} |")
            md.append("")
            for k in GAIN_ACCOUNTINGS:
                md.append(f"- Answer on {md_text(s)}, ({k}) {ACCOUNTINGS[k]}: {_tally(c['answers'][s][k])}.")
        est = sorted({e for p in c["points"] for e in p["estimated"]})
        if est:
            md += ["", f"FLOPs estimated as 6·N·D (training) and 2·N·D (forward), N the total parameters, for: "
                       f"{', '.join(est)} (the table gave no FLOPs column; the other runs count N as matmul "
                       "weights + output layer + attention, docs/report.md)."]
    return md


def report_json(cs: dict) -> dict:
    out = {}
    for student, c in cs.items():
        out[student] = {
            "frontier": {s: {"sd": v["sd"], "df": v["df"], "nodes": v["nodes"]} for s, v in c["sets"].items()},
            "points": [{**{k: p[k] for k in ("teacher", "alpha", "alpha_schedule", "seeds", "loss", "compute",
                                             "matched_gain", "estimated")},
                        **({"auto_ceiling": p["auto_ceiling"]} if is_auto(p) else {})} for p in c["points"]],
            "answers": c["answers"]}
    return out


def _kd_points(ax, c: dict, s: str, style: Style) -> None:
    """Each teacher's best-α point at its compute under (b), filled where the verdict is
    significant, with the compute-matched gain's interval as its error bar and its teacher's
    name; the same loss at (c)'s compute faded, joined to it by a dotted line. One call per α
    marker, however many teachers."""
    from matplotlib.collections import LineCollection  # lazy: matplotlib is only for the report's figures

    point_of = _points_by_teacher_alpha(c["points"])
    at_c = {a["teacher"]: a for a in c["answers"][s]["c"]}
    drawn = [(a, point_of[a["teacher"], _alpha(a)]["loss"][s]) for a in c["answers"][s]["b"]
             if a["compute"] and a["compute"] > 0 and math.isfinite(point_of[a["teacher"], _alpha(a)]["loss"][s])]
    same_x: dict = {}  # teachers at one compute (one student, teachers of one cost) side by side
    for a, _ in drawn:
        same_x.setdefault(a["compute"], []).append(a["teacher"])
    slot = {t: i for group in same_x.values() for i, t in enumerate(group)}
    by_marker: dict = {}
    for a, loss in drawn:
        group = same_x[a["compute"]]
        x = spread([a["compute"]], slot[a["teacher"]], len(group), log=True)[0]
        ci = a["interval"]
        other = at_c.get(a["teacher"])
        by_marker.setdefault(style.marker(_alpha(a)), []).append(
            (x, loss, style.colour(a["teacher"]), a["verdict"] in SIGNIFICANT,
             (ci[1] - a["gain"], a["gain"] - ci[0]) if ci else (0.0, 0.0),  # loss = frontier - gain: mirrored
             other["compute"] if other and (other["compute"] or 0) > 0 else None, a["teacher"]))
    for marker, pts in by_marker.items():
        xs, ys, colours, filled, errors, c_xs, _ = zip(*pts)
        points(ax, xs, ys, colours, marker, filled, errors, zorder=4)
        faded = [(x, y, col, cx) for x, y, col, cx in zip(xs, ys, colours, c_xs) if cx]
        if faded:
            ax.add_collection(LineCollection([((x, y), (cx, y)) for x, y, _, cx in faded], colors=[f[2] for f in faded],
                                             linestyles=":", linewidths=0.9, zorder=2))
            ax.scatter([f[3] for f in faded], [f[1] for f in faded], s=22, marker=marker, c=[f[2] for f in faded],
                       alpha=0.35, zorder=2)
    if len(drawn) <= LABELLED:
        for pts in by_marker.values():
            for x, y, colour, *_, teacher in pts:
                ax.annotate(figure_text(teacher), (x, y), xytext=(5, -3), textcoords="offset points", fontsize=7,
                            color=colour)


@plain_text_figures
def plot(out_dir: Path, cs: dict, sets: list[str], style: Style, level: float) -> list[Path]:
    """loss vs total compute: the supervised frontier (line) and its nodes, and each teacher's
    best-α point at its compute under (b), its compute under (c) faded beside it; one panel per
    student and set."""
    drawable = [n for c in cs.values() for s in sets for n in c["sets"][s]["nodes"] if n["compute"] > 0] + \
        [a for c in cs.values() if c["points"] for s in sets for a in c["answers"][s]["b"] if (a["compute"] or 0) > 0]
    if not any(c["points"] for c in cs.values()) or not drawable:  # no FLOPs (a table without them): no figure
        return []
    from matplotlib.lines import Line2D  # lazy: matplotlib is only for the report's figures

    fig, axes = subplots(len(cs), len(sets), 5.5, 4.5)
    for row, (student, c) in enumerate(cs.items()):
        for ax, s in zip(axes[row], sets):
            nodes = [n for n in c["sets"][s]["nodes"] if n["compute"] > 0]
            if nodes:
                ax.plot([n["compute"] for n in nodes], [n["frontier"] for n in nodes], "k-", lw=1.5, zorder=1)
                ax.plot([n["compute"] for n in nodes], [n["loss"] for n in nodes], "ks", ms=5, zorder=1)
            _kd_points(ax, c, s, style)
            if ax.has_data():  # a log axis needs a positive compute (a table without FLOPs has none)
                log_axis(ax)
            ax.set_xlabel("total training FLOPs")
            ax.set_ylabel(figure_text(f"{student} {s} loss"))
            ax.set_title(figure_text(f"{s}" + (f", student {student}" if len(cs) > 1 else "")), fontsize=9)
    extra = [Line2D([], [], color="black", lw=1.5, marker="s", ms=5, label="supervised frontier (its runs)"),
             Line2D([], [], color="dimgrey", ls=":", marker="o", alpha=0.5,
                    label="faded: + teacher pretraining (c)"), *fill_handles(level)]
    style.legend(fig, extra=extra)
    return [save(fig, out_dir / "loss_vs_compute.png",
                 f"Loss vs total compute: each teacher at its best α under (b), {100 * level:g} % intervals of "
                 "the compute-matched gain")]
