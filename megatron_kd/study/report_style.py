"""One look for every figure of `mkd report`: one colour per teacher (a hue per teacher model, a
shade per training budget: lighter = fewer tokens), one marker per α (or α schedule), filled
markers where the report's interval excludes zero and hollow ones where it does not, a title on
each figure, legends outside the panels, and log axes whose tick labels are plain text (the
figures draw with mathtext off: names are drawn as typed, report_output.plain_text_figures)."""

from __future__ import annotations

import math
from pathlib import Path

from megatron_kd.study.report_output import figure_text
from megatron_kd.study.stats import is_auto

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
LEGEND_INCHES = 2.8  # room right of the panels for the legends (a tight bounding box costs a second layout)
LEGEND_TEACHERS = 24  # above this many teachers the legend names the teacher models (hues) instead
SIGNIFICANT = ("helps", "hurts", "worth it", "not worth it")  # verdicts whose interval excludes zero


def _model_of(p: dict) -> str:
    return str(p.get("teacher_model") or str(p["teacher"]).split("@")[0])


def _palette(n: int) -> list[tuple]:
    """`n` distinct hues: tab10, then tab20, then evenly spaced samples of turbo."""
    from matplotlib import colormaps  # lazy: matplotlib is only for the report's figures

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def _lighter(rgba: tuple, amount: float) -> tuple:
    """`rgba` mixed with white (amount 0: unchanged, 1: white)."""
    return tuple(c + (1 - c) * amount for c in rgba[:3]) + (1.0,)


class Style:
    """Colours and markers of one report, built once from every point it draws so that a teacher
    and an α look the same in every figure."""

    def __init__(self, points: list[dict]):
        teachers: dict = {}
        for p in points:
            if p.get("teacher") and p["teacher"] not in teachers:
                teachers[p["teacher"]] = (_model_of(p), p.get("teacher_tokens") or 0)
        models: dict = {}
        for t, (model, tokens) in teachers.items():
            models.setdefault(model, []).append((tokens, t))
        self.model_colour = dict(zip(sorted(models), _palette(len(models))))
        self.colours = {}  # in legend order: by model, then budget
        for model, members in sorted(models.items()):
            members.sort()
            for i, (_, t) in enumerate(members):  # the largest budget in the model's full hue
                shade = 0.6 * (len(members) - 1 - i) / (len(members) - 1) if len(members) > 1 else 0.0
                self.colours[t] = _lighter(self.model_colour[model], shade)
        self.model_of = {t: m for t, (m, _) in teachers.items()}
        self.alphas = sorted({alpha_text(p) for p in points if p.get("teacher") and alpha_text(p)},
                             key=lambda a: (not _is_number(a), float(a) if _is_number(a) else 0.0, a))
        self.markers = {a: MARKERS[i % len(MARKERS)] for i, a in enumerate(self.alphas)}

    def colour(self, teacher) -> tuple:
        return self.colours.get(teacher, (0.3, 0.3, 0.3, 1.0))

    def marker(self, alpha: str) -> str:
        return self.markers.get(alpha, "o")

    def legend(self, fig, teachers=None, extra: list = ()) -> None:
        """The figure's legends, right of its panels: the teachers' colours (the models' hues when
        there are many), the α markers, and `extra` (handles) such as the baseline or the fill."""
        from matplotlib.lines import Line2D  # lazy: matplotlib is only for the report's figures

        names = [t for t in self.colours if teachers is None or t in teachers]
        if len(names) <= LEGEND_TEACHERS:
            handles = [Line2D([], [], color=self.colours[t], lw=3, label=figure_text(t)) for t in names]
            title = "teacher"
        else:
            models = sorted({self.model_of[t] for t in names})[:LEGEND_TEACHERS]
            handles = [Line2D([], [], color=self.model_colour[m], lw=3, label=figure_text(m)) for m in models]
            title = f"teacher model\n({len(names)} teachers;\nlighter: fewer tokens)"
        handles += [Line2D([], [], color="dimgrey", marker=self.markers[a], ls="none", label=f"α {figure_text(a)}")
                    for a in self.alphas[:len(MARKERS)]]
        handles += list(extra)
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(_panels_right(fig), 0.93), fontsize=8,
                   title=title, title_fontsize=8, frameon=False)


def alpha_text(p: dict) -> str:
    """A point's α as every figure names it: the value, or its schedule."""
    return alpha_words(p.get("alpha"), p.get("alpha_schedule"), is_auto(p))


def alpha_words(alpha: float | None, schedule: str | None, auto: bool) -> str:
    """An α as every figure names it (a point's or a run's): `auto`, its schedule, or the value."""
    if auto:
        return "auto"
    if schedule:
        return str(schedule)
    return f"{alpha:g}" if alpha is not None else ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def fill_handles(level: float) -> list:
    """Legend entries saying what filled and hollow markers mean."""
    from matplotlib.lines import Line2D  # lazy: matplotlib is only for the report's figures

    pct = f"{100 * level:g} %"
    return [Line2D([], [], color="dimgrey", marker="o", ls="none", label=f"filled: {pct} interval excludes 0"),
            Line2D([], [], color="dimgrey", marker="o", ls="none", markerfacecolor="white",
                   label="hollow: within noise")]


def points(ax, xs, ys, colours, marker: str, filled, errors=None, zorder: float = 3) -> None:
    """Markers at (xs, ys) in their colours, hollow where not `filled`, with vertical error bars
    (`errors`: (below, above) per point, None for none) drawn thin and half transparent under
    them, one call each however many points (a report of 10^5 runs draws them in seconds)."""
    import numpy as np
    from matplotlib.collections import LineCollection  # lazy: matplotlib is only for the report's figures

    if not len(xs):
        return
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if errors is not None:
        segs = [((x, y - lo), (x, y + hi)) for x, y, (lo, hi) in zip(xs, ys, errors) if lo or hi]
        cols = [c for c, (lo, hi) in zip(colours, errors) if lo or hi]
        ax.add_collection(LineCollection(segs, colors=cols, linewidths=1.0, alpha=0.45, zorder=zorder - 1))
    face = [c if f else (1, 1, 1, 1) for c, f in zip(colours, filled)]
    ax.scatter(xs, ys, s=30, marker=marker, c=face, edgecolors=colours, linewidths=1.2, zorder=zorder)


def spread(xs: list[float], slot: int, slots: int, log: bool, width: float = 0.025) -> list[float]:
    """`xs` moved sideways by their α's `slot` of `slots` (a fraction `width` of the axis' span
    each; multiplicative on a log axis), so that points and error bars of the α values at one x
    do not hide each other."""
    if slots <= 1 or not xs:
        return list(xs)
    shift = (slot - (slots - 1) / 2) * min(width, 0.3 / slots)  # many slots share 30 % of the span
    if log:
        lo, hi = math.log10(min(xs)), math.log10(max(xs))
        return [x * 10 ** (shift * max(hi - lo, 1.0)) for x in xs]
    span = (max(xs) - min(xs)) or 1.0
    return [x + shift * span for x in xs]


def log_axis(ax, axis: str = "x") -> None:
    """A log axis with tick labels in plain text (1e5 as 100K): mathtext is off in the figures."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # lazy: figures only

    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: tick_text(v)))
    target.set_minor_formatter(NullFormatter())


def tick_text(v: float) -> str:
    """A power of ten as a log axis labels it: 100K, 1M, 10T."""
    if not v > 0:
        return ""
    for unit, div in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if v >= div:
            return f"{v / div:g}{unit}"
    return f"{v:g}"


def subplots(rows: int, cols: int, width: float, height: float):
    """A figure of rows x cols panels of width x height inches, with room for the legends right
    of them."""
    import matplotlib.pyplot as plt  # lazy: matplotlib is only for the report's figures

    return plt.subplots(rows, cols, figsize=(width * cols + LEGEND_INCHES, height * rows), squeeze=False)


def _panels_right(fig) -> float:
    """Where the panels end and the legends begin, as a fraction of the figure's width."""
    return 1 - LEGEND_INCHES / fig.get_figwidth()


def _fixed_layout(fig, title_lines: int) -> None:
    """Margins and gaps in inches, set once: an automatic layout measures every tick label, and
    costs as much as drawing the figure again."""
    w, h = fig.get_figwidth(), fig.get_figheight()
    rows, cols = fig.axes[0].get_gridspec().get_geometry()
    left, right = 0.9 / w, _panels_right(fig) - 0.15 / w
    bottom, top = 0.6 / h, 1 - (0.5 + 0.2 * title_lines) / h
    width = ((right - left) * w - (cols - 1) * 1.0) / cols  # one panel's inches, 1 inch between panels
    height = ((top - bottom) * h - (rows - 1) * 0.85) / rows
    fig.subplots_adjust(left=left, right=right, bottom=bottom, top=top, wspace=1.0 / width, hspace=0.85 / height)


def save(fig, path: Path, title: str) -> Path:
    """The figure with its title (wrapped to the figure's width), its panels left of the legends."""
    import textwrap

    lines = textwrap.wrap(figure_text(title), max(40, int(fig.get_figwidth() * 11)))
    _fixed_layout(fig, len(lines))
    fig.suptitle("\n".join(lines), fontsize=11, y=1 - 0.1 / fig.get_figheight(), va="top")
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt  # lazy: matplotlib is only for the report's figures

    plt.close(fig)
    return path
