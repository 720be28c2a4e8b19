"""The figures of `mkd report` that read the paired analysis (analysis.analyse) and the runs'
validation curves: each plots the numbers the report tests, with the intervals it reports, in
report_style's one look (a colour per teacher, a marker per α, filled = significant).

    gain_vs_teacher.png         paired gain vs the teacher's own loss, per set
    gain_vs_teacher_tokens.png  paired gain vs teacher training tokens and pretraining FLOPs
    best_alpha_vs_teacher.png   best α (seed means, α = 0 competing) vs teacher strength
    loss_curves.png             validation loss during training, seeds averaged
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from megatron_kd.study.report_output import figure_text, plain_text_figures
from megatron_kd.study.report_style import (
    SIGNIFICANT,
    Style,
    alpha_text,
    alpha_words,
    fill_handles,
    log_axis,
    points,
    save,
    spread,
    subplots,
    tick_text,
)
from megatron_kd.study.rows import RunRow

SERIES_LINE = 50  # a series of more points is drawn without its joining line (a line through noise)
LABELLED = 30  # up to this many points of a panel carry their teacher's name
CURVE_MARKERS = 15  # a curve of this many evaluations or fewer marks each of them


def _subplots(rows: int, cols: int, width: float = 5.0, height: float = 4.0):
    return subplots(rows, cols, width, height)


def _panel_title(ax, s: str, id_set: str, student: str, students: int) -> None:
    where = "in-domain" if s == id_set else "OOD"
    ax.set_title(figure_text(f"{s} ({where})" + (f", student {student}" if students > 1 else "")), fontsize=9)


def _error(g: dict) -> tuple[float, float]:
    """The report's interval as (below, above) the gain (none without a noise estimate)."""
    ci = g.get("interval")
    return (g["gain"] - ci[0], ci[1] - g["gain"]) if ci else (0.0, 0.0)


def _kd_students(a: dict) -> dict:
    return {student: [p for p in st["points"] if p["teacher"]] for student, st in a["students"].items()
            if any(p["teacher"] for p in st["points"])}


def _draw_gains(ax, pts: list[dict], s: str, x_of, style: Style, log: bool,
                line_by_model: bool) -> tuple[int, int]:
    """Each α's points of `pts` at x_of(point) (None: not drawn) against their paired gain on `s`,
    with its interval; returns (points drawn, points without an x)."""
    missing = shown = 0
    alphas = [a for a in style.alphas if any(alpha_text(p) == a for p in pts)]
    for slot, a in enumerate(alphas):
        drawn = []
        for p in pts:
            g = p["gains"].get(s)
            if alpha_text(p) != a or g is None or not math.isfinite(g["gain"]):
                continue
            x = x_of(p)
            if x is None or not math.isfinite(x) or (log and x <= 0):
                missing += 1
                continue
            drawn.append((x, p, g))
        if not drawn:
            continue
        shown += len(drawn)
        xs = spread([x for x, _, _ in drawn], slot, len(alphas), log)
        ys = [g["gain"] for _, _, g in drawn]
        if line_by_model:  # one line per teacher model along its budgets, in the model's hue
            by_model: dict = {}
            for x, (_, p, _), y in zip(xs, drawn, ys):
                by_model.setdefault(style.model_of.get(p["teacher"]), []).append((x, y))
            for model, xy in by_model.items():
                if 1 < len(xy) <= SERIES_LINE:
                    xy.sort()
                    ax.plot(*zip(*xy), color=style.model_colour.get(model, "grey"), lw=0.9, alpha=0.6, zorder=1)
        points(ax, xs, ys, [style.colour(p["teacher"]) for _, p, _ in drawn], style.marker(a),
               [g["verdict"] in SIGNIFICANT for _, _, g in drawn], [_error(g) for _, _, g in drawn])
    ax.axhline(0, color="grey", lw=0.8, zorder=0)
    return shown, missing


def _note(ax, text: str) -> None:
    ax.text(0.01, 0.01, text, transform=ax.transAxes, fontsize=7, color="dimgrey", va="bottom")


def gain_vs_teacher(out_dir: Path, a: dict, sets: list[str], style: Style) -> list[Path]:
    students = _kd_students(a)
    if not students:
        return []
    fig, axes = _subplots(len(students), len(sets))
    for row, (student, kd) in enumerate(students.items()):
        for ax, s in zip(axes[row], sets):
            shown, _ = _draw_gains(ax, kd, s, lambda p, s=s: p["teacher_val"].get(s), style, log=False,
                                   line_by_model=False)
            if not shown:
                _note(ax, figure_text(f"no teacher has a {s} loss"))
            ax.invert_xaxis()
            ax.set_xlabel(figure_text(f"teacher's own {s} loss (lower = stronger)"))
            ax.set_ylabel("paired gain (nats; > 0: KD helped)")
            _panel_title(ax, s, a["id_set"], student, len(students))
    style.legend(fig, extra=fill_handles(a["level"]))
    return [save(fig, out_dir / "gain_vs_teacher.png",
                 f"Paired gain over the no-KD baseline vs teacher strength ({100 * a['level']:g} % intervals)")]


def gain_vs_teacher_tokens(out_dir: Path, a: dict, sets: list[str], style: Style) -> list[Path]:
    students = _kd_students(a)
    if not students:
        return []
    axes_of = [(key, label) for key, label in (("teacher_tokens", "teacher training tokens"),
                                               ("teacher_flops", "teacher pretraining FLOPs"))
               if any((p.get(key) or 0) > 0 for kd in students.values() for p in kd)]  # a table may have none
    if not axes_of:
        return []
    fig, axes = _subplots(len(axes_of) * len(students), len(sets))
    for i, (student, kd) in enumerate(students.items()):
        for j, (key, label) in enumerate(axes_of):
            for ax, s in zip(axes[len(axes_of) * i + j], sets):
                shown, missing = _draw_gains(ax, kd, s, lambda p, key=key: p.get(key), style, log=True,
                                             line_by_model=True)
                if shown:  # a log axis needs a positive value (a table without FLOPs has none)
                    log_axis(ax)
                if missing:
                    _note(ax, f"{missing} point(s) without {label} not drawn (e.g. a control)")
                ax.set_xlabel(label)
                ax.set_ylabel("paired gain (nats; > 0: KD helped)")
                _panel_title(ax, s, a["id_set"], student, len(students))
    style.legend(fig, extra=fill_handles(a["level"]))
    return [save(fig, out_dir / "gain_vs_teacher_tokens.png",
                 f"Paired gain vs {' and '.join(label for _, label in axes_of)} ({100 * a['level']:g} % "
                 "intervals; the α values at one x drawn side by side)")]


def best_alpha_vs_teacher(out_dir: Path, a: dict, style: Style) -> list[Path]:
    id_set = a["id_set"]
    students = {s: st for s, st in a["students"].items() if st["best_alpha"].get(id_set)}
    if not students:
        return []
    fig, axes = _subplots(1, len(students), 6.0, 4.0)
    for ax, (student, st) in zip(axes[0], students.items()):
        first = {}
        for p in st["points"]:
            first.setdefault(p["teacher"], p)
        best = [(t, v) for t, v in st["best_alpha"][id_set].items()
                if math.isfinite(first[t]["teacher_val"].get(id_set, math.nan))]
        by_marker: dict = {}  # one call per α marker, however many teachers
        for t, v in best:
            by_marker.setdefault(style.marker(f"{v['alpha']:g}"), []).append((t, v))
        for marker, tv in by_marker.items():
            points(ax, [first[t]["teacher_val"][id_set] for t, _ in tv], [v["alpha"] for _, v in tv],
                   [style.colour(t) for t, _ in tv], marker,
                   [bool(v.get("interval")) and (v["interval"][0] > 0 or v["interval"][1] < 0) for _, v in tv])
        for t, v in best if len(best) <= LABELLED else ():
            ax.annotate(figure_text(t), (first[t]["teacher_val"][id_set], v["alpha"]), xytext=(4, 4),
                        textcoords="offset points", fontsize=7)
        alphas = sorted({v["alpha"] for _, v in best} | {0.0})
        ax.set_yticks(alphas)
        ax.set_ylim(min(alphas) - 0.1, max(alphas) + 0.1)
        if best:
            ax.invert_xaxis()
        else:
            _note(ax, figure_text(f"no teacher has a {id_set} loss"))
        ax.set_xlabel(figure_text(f"teacher's own {id_set} loss (lower = stronger)"))
        ax.set_ylabel("best α by seed means (0 = no KD)")
        ax.set_title(figure_text(f"student {student}"), fontsize=9)
    style.legend(fig, extra=fill_handles(a["level"]))
    return [save(fig, out_dir / "best_alpha_vs_teacher.png",
                 f"Best α per teacher on {id_set} (filled: its gain's interval excludes 0)")]


def _curves(rows: list[RunRow], sets: list[str]) -> dict:
    """{student: {(teacher or None, α, baseline tokens): {set: {tokens: [loss per seed]}}}}."""
    curves: dict = {}
    for r in rows:
        key = (r.teacher, alpha_words(r.alpha, r.alpha_schedule, r.is_auto) if r.teacher else "", r.baseline_tokens)
        for v in r.curve:  # a results table has none
            for s in sets:
                if f"val/{s}" in v and math.isfinite(v[f"val/{s}"]):
                    curves.setdefault(r.student, {}).setdefault(key, {}).setdefault(s, {}) \
                        .setdefault(v["tokens"], []).append(v[f"val/{s}"])
    return curves


def loss_curves(out_dir: Path, rows: list[RunRow], sets: list[str], id_set: str, style: Style) -> list[Path]:
    from matplotlib.lines import Line2D  # lazy: matplotlib is only for the report's figures
    from matplotlib.ticker import FuncFormatter

    curves = _curves(rows, sets)
    if not curves:
        return []
    fig, axes = _subplots(len(curves), len(sets), 6.0, 4.5)
    for row, (student, per_key) in enumerate(sorted(curves.items())):
        for ax, s in zip(axes[row], sets):
            for (teacher, a, base_tokens), per in sorted(per_key.items(), key=lambda kv: repr(kv[0])):
                c = sorted((t, statistics.fmean(xs)) for t, xs in per.get(s, {}).items())
                if not c:
                    continue
                few = len(c) <= CURVE_MARKERS
                if teacher is None:  # the baseline bold black; one of another length dashed
                    ax.plot(*zip(*c), color="black", lw=2.2 if base_tokens is None else 1.2,
                            ls="-" if base_tokens is None else "--", marker="o" if few else None, ms=3, zorder=3)
                else:
                    ax.plot(*zip(*c), color=style.colour(teacher), lw=1.0, marker=style.marker(a) if few else None,
                            ms=4, alpha=0.85)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: tick_text(v) if v else "0"))
            ax.set_xlabel("student training tokens")
            ax.set_ylabel(figure_text(f"val {s} loss (mean over seeds)"))
            _panel_title(ax, s, id_set, student, len(curves))
    extra = [Line2D([], [], color="black", lw=2.2, label="no-KD baseline"),
             Line2D([], [], color="black", lw=1.2, ls="--", label="baseline of another length")]
    style.legend(fig, extra=extra)
    return [save(fig, out_dir / "loss_curves.png", "Validation loss during training (each point's seeds averaged)")]


@plain_text_figures
def draw(out_dir: Path, rows: list[RunRow], a: dict, sets: list[str], style: Style) -> list[Path]:
    """Every figure of this module, in the report's order."""
    return (gain_vs_teacher(out_dir, a, sets, style) + loss_curves(out_dir, rows, sets, a["id_set"], style)
            + gain_vs_teacher_tokens(out_dir, a, sets, style) + best_alpha_vs_teacher(out_dir, a, style))


def style_of(a: dict) -> Style:
    """The report's one style, from every point of every student."""
    return Style([p for st in a["students"].values() for p in st["points"]])

