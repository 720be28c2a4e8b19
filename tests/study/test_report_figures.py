"""The report's figures: every one drawn from a synthetic sweep with warnings as errors, each
with a title, plotting the report's own numbers and intervals; one colour per teacher and one
marker per α throughout."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

from megatron_kd.study import analysis, compute_report, report_figures
from megatron_kd.study.report import write_report
from megatron_kd.study.report_output import FIGURES
from megatron_kd.study.report_style import Style
from megatron_kd.study.rows import RunRow, frozen_curve
from tests.study.synthetic_v3 import SETS, v3_rows


def _rows(flops: bool = True) -> list[RunRow]:
    """Study v3's shape (five teachers, the unigram control, an α schedule, frontier baselines)
    with three evaluations per run (for the curves) and, with `flops`, the FLOPs columns."""
    rows = v3_rows(np.random.default_rng(1), effect=lambda t, a, s: 0.05 if t.startswith("small") else 0.0,
                   schedules=("1-cosine-0",))
    out = []
    for r in rows:
        tokens = r.baseline_tokens or 614400
        curve = [{"tokens": tokens * k // 3, **{f"val/{s}": v + 0.3 * (3 - k) for s, v in r.val.items()}}
                 for k in (1, 2, 3)]
        r = replace(r, student_tokens=tokens, data_seed=7, curve=frozen_curve(curve))
        out.append(r if flops else replace(r, student_params=None, teacher_params=None))
    return out


@pytest.mark.slow
def test_every_figure_draws_without_a_warning_and_plots_the_reports_intervals(tmp_path, monkeypatch):
    drawn, titles = [], {}

    def record(module, name, wrap):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **k: wrap(original, *a, **k))

    def points(original, ax, xs, ys, colours, marker, filled, errors=None, **k):
        drawn.append((list(ys), errors, list(filled)))
        return original(ax, xs, ys, colours, marker, filled, errors, **k)

    def save(original, fig, path, title):
        titles[path.name] = title
        return original(fig, path, title)

    for module in (report_figures, compute_report):
        record(module, "points", points)
        record(module, "save", save)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's empty means and matplotlib's log scales included
        out = write_report(_rows(), list(SETS), tmp_path / "r", "t", 0.95, 0.01, None)
    assert sorted(p.name for p in out["plots"]) == sorted(FIGURES)
    assert set(titles) == set(FIGURES) and all(len(t) > 20 for t in titles.values())
    # every point's paired gain is drawn with the report's interval, filled where it is significant
    shown = {(round(y, 9), round(y - lo, 9), round(y + hi, 9), f)
             for ys, errors, filled in drawn if errors for y, (lo, hi), f in zip(ys, errors, filled)}
    st = out["study"]["students"]["s"]
    for p in st["points"]:
        for s, g in p["gains"].items():
            if g["interval"]:
                ci = g["interval"]
                assert (round(g["gain"], 9), round(ci[0], 9), round(ci[1], 9),
                        g["verdict"] in ("helps", "hurts")) in shown, (p["teacher"], s)
    # loss vs compute: each teacher's best-α loss with its compute-matched gain's interval
    answers = out["compute"]["s"]["answers"]["indomain"]["b"]
    for a in answers:
        if a["interval"] and a["compute"]:
            half = (a["interval"][1] - a["interval"][0]) / 2
            assert any(errors and any(math.isclose(lo, half, rel_tol=1e-9) for lo, _ in errors)
                       for _, errors, _ in drawn)


@pytest.mark.slow
def test_figures_of_a_table_without_flops_or_curves_draw_without_a_warning(tmp_path):
    rows = [replace(r, curve=()) for r in _rows(flops=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = write_report(rows, list(SETS), tmp_path / "r", "t", 0.95, 0.01, None)
    # no FLOPs: the compute figure and the FLOPs row are left out, not drawn on an empty log axis
    assert sorted(p.name for p in out["plots"]) == sorted(["gain_vs_teacher.png", "gain_vs_teacher_tokens.png",
                                                           "best_alpha_vs_teacher.png"])


def test_one_colour_per_teacher_one_marker_per_alpha():
    teachers = [f"m{i}" for i in range(13)] + [f"big@{n}" for n in (1, 2, 3)]
    points = [{"teacher": t, "alpha": a, "teacher_tokens": int(t.split("@")[1]) if "@" in t else None,
               "teacher_model": t.split("@")[0]} for t in teachers for a in (0.2, 0.5, 1.0)]
    points += [{"teacher": "m0", "alpha": None, "alpha_schedule": "1-cosine-0"}, {"teacher": None, "alpha": 0.0}]
    style = Style(points)
    colours = [style.colour(t) for t in teachers]
    assert len(set(colours)) == len(teachers)  # 13 models and three budgets of one: 16 distinct colours
    assert style.alphas == ["0.2", "0.5", "1", "1-cosine-0"]
    assert len({style.marker(a) for a in style.alphas}) == 4
    # the budgets of one model: one hue, lighter for fewer tokens
    shades = [sum(style.colour(f"big@{n}")[:3]) for n in (1, 2, 3)]
    assert shades[0] > shades[1] > shades[2]


def test_alpha_labels_agree():
    p = {"teacher": "t", "alpha": 0.5, "alpha_schedule": None}
    assert analysis.alpha_label(p) == "0.5" == report_figures.alpha_text(p)
