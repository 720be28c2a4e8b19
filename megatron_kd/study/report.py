"""`mkd report SWEEP_DIR`: the study's table (Markdown + CSV), best α per teacher, compute
accounting, and plots (gain vs teacher strength per α; validation curves)."""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.models.params import human
from megatron_kd.study import analysis, compute, compute_report, report_auto, report_figures, report_study
from megatron_kd.study.report_output import check_outputs, figure_sets, md_text, record_outputs
from megatron_kd.study.rows import RunRow
from megatron_kd.study.stats import is_auto
from megatron_kd.study.sweep_dir import collect
from megatron_kd.study.table import read_table, write_table

log = logging.getLogger("megatron_kd")


def finite_rows(rows: list[RunRow], sets: list[str]) -> list[RunRow]:
    """The rows whose losses are all finite (plots cannot place a NaN: a diverged run); the others
    are named in a warning, and stay in the tables."""
    keep = []
    for r in rows:
        bad = [s for s in sets if not math.isfinite(r.val.get(s, 0.0))
               or not math.isfinite(r.teacher_val.get(s, 0.0))]
        if bad:
            log.warning("run %s: the %s loss is not finite (diverged?); left out of the plots",
                        r.name, ", ".join(bad))
        else:
            keep.append(r)
    return keep


def baselines(rows: list[RunRow], sets: list[str]) -> dict:
    """Per student: mean (and std over seeds) of the baseline's final validation losses."""
    out = {}
    for student in sorted({r.student for r in rows}):  # one order in every process (set order follows the hash seed)
        b = [r for r in rows if r.student == student and not r.teacher and r.baseline_tokens is None]
        if not b:
            continue
        out[student] = {}
        for s in sets:
            xs = [r.val[s] for r in b if math.isfinite(r.val.get(s, math.nan))]  # a diverged seed: none
            if xs:
                out[student][s] = (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None)
    return out


def _fmt(x, nd=4) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


@dataclass(frozen=True)
class RunGains:
    """One run's gain per set (the per-run table's), and why a set's gain is not paired."""

    gain: dict = field(default_factory=dict)  # set -> gain (nats; positive: distillation helped)
    unpaired: dict = field(default_factory=dict)  # set -> why it is against the baselines' mean


def paired_run_gains(rows: list[RunRow], sets: list[str], study: dict) -> dict[str, RunGains]:
    """{run name: its gains} by the paired table's definition (analysis.pairs_by_seed): its
    student's baseline run *of the same seed* minus the run's loss, where the student's paired fit
    on that set pairs by seed; else the baselines' mean minus the run's loss, and `unpaired` says
    why per set (the tables mark those cells). A baseline of another length has none."""
    base = baselines(rows, sets)
    by_seed = {(r.student, r.seed_key): r for r in rows
               if not r.teacher and r.baseline_tokens is None}
    out = {}
    for r in rows:
        gains = out[r.name] = RunGains()
        if r.baseline_tokens is not None:  # a baseline of another length: a frontier point, no gain
            continue
        st = study["students"].get(r.student)
        twin = by_seed.get((r.student, r.seed_key))
        for s in sets:
            b = base.get(r.student, {}).get(s)
            if b is None or s not in r.val:
                continue
            same_seed = twin.val.get(s, math.nan) if twin else math.nan
            if st is not None and not analysis.pairs_by_seed(st["fits"][s]):
                gains.unpaired[s] = "no residual degrees of freedom and one baseline seed: no noise estimate"
            elif not math.isfinite(same_seed):
                gains.unpaired[s] = "no baseline run of its seed"
            gains.gain[s] = (b[0] if s in gains.unpaired else same_seed) - r.val[s]
    return out


def _claims_json(c: dict) -> dict:
    keep = ("claim", "verdict", "null", "statistic", "p", "p_holm", "p_against", "p_against_holm",
            "why", "rho", "rho_interval", "weak", "margin",
            "as_smoothing", "controls_missing", "primary", "secondary")
    out = {k: c[k] for k in keep if k in c}
    if "axes" in c:
        out["axes"] = [{"axis": r["axis"], "alpha": r["alpha"], "teachers": r["teachers"], "tested": r["tested"],
                        "reading": r.get("reading"), "last_step": _est(r["last_step"]),
                        "slope": _est(r["slope"]) if r["slope"] is not None else None}
                       for r in c["axes"]]
    return out


def _est(e) -> dict:
    return {"value": e.value, "se": e.se, "df": e.df}


def report_json(study: dict, sets: list[str]) -> dict:
    """report.json: each point's paired gain and interval per set, each claim's verdict."""
    out = {"level": study["level"], "equivalence": study["equivalence"], "in_domain": study["id_set"],
           "ood": study["ood_sets"], "students": {}}
    for student, st in study["students"].items():
        out["students"][student] = {
            "noise": st["noise"],
            "points": [{"teacher": p["teacher"], "alpha": p["alpha"], "alpha_schedule": p["alpha_schedule"],
                        **({"auto_ceiling": p["auto_ceiling"]} if is_auto(p) else {}),
                        "temperature": p["temperature"], "kind": p["kind"], "seeds": p["seeds"], "runs": p["names"],
                        "loss": p["mean"], "gain": {s: {"gain": g["gain"], "se": g["se"], "df": g["df"],
                                                        "interval": g["interval"], "p": g["p"],
                                                        "verdict": g["verdict"]} for s, g in p["gains"].items()}}
                       for p in st["points"]],
            "best_alpha": st["best_alpha"],
            "claims": [_claims_json(c) for c in st["claims"]]}
        if st.get("auto"):
            out["students"][student]["auto"] = report_auto.report_json(st)
    return out


def build_report(sweep_dir: Path, level: float = analysis.LEVEL, equivalence: float = analysis.EQUIVALENCE,
                 in_domain: str | None = None, overwrite: bool = False) -> dict:
    """The report of a sweep directory, written beside it (report.md, report.json, report.csv
    in the results-table format, figures)."""
    sweep_dir = Path(sweep_dir)
    rows, _, sets = collect(sweep_dir)
    return write_report(rows, sets, sweep_dir, f"Sweep report: {sweep_dir.name}", level, equivalence, in_domain,
                        inputs=[sweep_dir / "points.json"], overwrite=overwrite)


def build_report_from_table(table: Path, out_dir: Path | None = None, level: float = analysis.LEVEL,
                            equivalence: float = analysis.EQUIVALENCE, in_domain: str | None = None,
                            overwrite: bool = False) -> dict:
    """The same report from a results table (study/table.py), written to `out_dir` (default:
    beside the table, in TABLE_report/)."""
    table = Path(table)
    rows, sets = read_table(table)
    out_dir = Path(out_dir) if out_dir else table.with_name(f"{table.stem}_report")
    return write_report(rows, sets, out_dir, f"Report: {table.name}", level, equivalence, in_domain,
                        inputs=[table], overwrite=overwrite, elsewhere="choose another --out")


def check_options(sets: list[str], level: float, equivalence: float, in_domain: str | None) -> None:
    """The command's numbers and names, refused before anything is read further or written."""
    if in_domain is not None and in_domain not in sets:
        raise ConfigError(f"--in-domain {in_domain!r} is not a validation set of these runs ({', '.join(sets)[:300]})")
    if not 0.5 <= level < 1:
        raise ConfigError(f"--level {level} must be in [0.5, 1), e.g. 0.95 for 95 % intervals")
    if not (math.isfinite(equivalence) and equivalence > 0):
        raise ConfigError(f"--equivalence {equivalence} must be a finite number > 0 nats, e.g. 0.01")


def refuse_repeated_runs(rows: list[RunRow]) -> None:
    """Two runs of one point with the same seeds would be one cell of the paired fit, the
    second silently replacing the first: refused, naming both."""
    seen: dict = {}
    for r in rows:
        key = (r.point_key, r.seed_key)
        if key in seen:
            raise ConfigError(f"runs {seen[key][:60]!r} and {r.name[:60]!r} are the same point (student, teacher, "
                              f"α, T, kind, top-k, schedule) with the same seed and data_seed; keep one run per "
                              "point and seed, or give them different seeds")
        seen[key] = r.name


def write_report(rows: list[RunRow], sets: list[str], out_dir: Path, title: str, level: float,
                 equivalence: float, in_domain: str | None, inputs: list[Path] = (), overwrite: bool = False,
                 elsewhere: str = "") -> dict:
    sweep_dir = out_dir = Path(out_dir)
    check_options(sets, level, equivalence, in_domain)
    rows = compute.with_baseline_lengths(rows)
    refuse_repeated_runs(rows)
    check_outputs(out_dir, [Path(p) for p in inputs], overwrite, elsewhere)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = baselines(rows, sets)
    study = analysis.analyse(rows, sets, level, equivalence, in_domain)
    run_gains = paired_run_gains(rows, sets, study)
    cs = compute.compute_study(rows, study, sets, level)
    report_auto.attach_compute(study, cs, rows)
    md = _runs_markdown(rows, sets, base, title, run_gains) + report_study.markdown(study, sets)
    md += report_auto.markdown(study)
    md += compute_report.markdown(cs, sets, level, study["id_set"])
    plotted = finite_rows(rows, sets)
    kept = {id(r) for r in plotted}
    left_out = [r.name for r in rows if id(r) not in kept]
    if left_out:
        md += ["", f"Left out of the plots (a loss that is not finite): {', '.join(map(md_text, left_out))}. "
                   "Their non-finite losses are left out of every statistic too (baseline means, paired fits, "
                   "intervals); their finite ones count."]
    drawn = figure_sets(sets, study["id_set"])
    if len(drawn) < len(sets):
        md += ["", f"The figures draw {len(drawn)} of the {len(sets)} validation sets (the in-domain set, then the "
                   f"others in the table's order: {', '.join(map(md_text, drawn))}); the tables above and "
                   "report.json hold every set."]
    plots = []
    if plotted:  # the figures' numbers: those of the tables unless a diverged run was left out
        shown, shown_cs = study, cs
        if len(plotted) < len(rows):
            shown = analysis.analyse(plotted, sets, level, equivalence, in_domain, n_boot=0)
            shown_cs = compute.compute_study(plotted, shown, sets, level)
        style = report_figures.style_of(shown)
        plots = report_figures.draw(sweep_dir, plotted, shown, drawn, style)
        plots += compute_report.plot(sweep_dir, shown_cs, drawn, style, level)
    md += ["", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    doc = report_json(study, sets)
    doc["compute"] = compute_report.report_json(cs)
    write_table(sweep_dir / "report.csv", rows, sets)
    write_text_atomic(sweep_dir / "report.md", "\n".join(md))
    # indented for a reader up to 10^4 runs; above, compact (json indents in pure Python: ~10 s
    # for 10^5 runs, and a file that large is read by programs)
    write_text_atomic(sweep_dir / "report.json", json.dumps(_finite(doc), indent=2 if len(rows) <= 10_000 else None,
                                                            default=_json_default, allow_nan=False))
    record_outputs(out_dir, [out_dir / n for n in ("report.md", "report.json", "report.csv")] + plots)
    return {"rows": rows, "baselines": base, "sets": sets, "plots": plots, "study": study, "json": doc,
            "run_gains": run_gains, "compute": cs, "out_dir": out_dir, "title": title, "left_out": left_out,
            "markdown": "\n".join(md)}


def _runs_markdown(rows: list[RunRow], sets: list[str], base: dict, title: str,
                   run_gains: dict[str, RunGains]) -> list[str]:
    """The report's head: one line per run (names escaped: they come from the table or sweep)."""
    marked = {s for g in run_gains.values() for s in g.unpaired}
    header = ["run", "student", "teacher", "alpha", "T", "kind", "seed"]
    header += [f"teacher {s}" for s in sets] + [f"val {s}" for s in sets]
    header += [f"gain {s}" + (" †" if s in marked else "") for s in sets]
    header += ["student FLOPs", "teacher KD FLOPs", "teacher pretrain FLOPs"]
    table = []
    for r in sorted(rows, key=lambda r: (r.student, str(r.teacher), r.alpha or 0, r.name)):
        f = compute.run_flops(r)
        table.append([md_text(r.name), md_text(r.student), md_text(r.teacher or "(baseline)"),
                      md_text("auto" if r.is_auto else r.alpha_schedule or _fmt(r.alpha, 2)),
                      _fmt(r.temperature, 2), md_text(r.kind or ""), md_text(r.seed if r.seed is not None else "")]
                     + [_fmt(r.teacher_val.get(s)) for s in sets]
                     + [_fmt(r.val.get(s)) for s in sets]
                     + [_fmt(run_gains[r.name].gain.get(s)) + (" †" if s in run_gains[r.name].unpaired else "")
                        for s in sets]
                     + [human(f.get("student") or 0), human(f.get("shared") or 0), human(f.get("pretrain") or 0)])
    md = [f"# {md_text(title)}", "",
          "Final validation loss (nats/token) per run; a run's gain = the loss of its student's no-KD "
          "baseline run of the same seed minus the run's (positive: distillation helped), the definition of the "
          "paired gains below, whose point gain is the mean of its runs' gains when every point has every "
          "seed. Per-run gains are single seeds: read the paired gains and the claims below, not this "
          "table's best row.", ""]
    for student, b in base.items():
        md.append(f"Baseline {md_text(student)}: " + ", ".join(
            f"{md_text(s)} {m:.4f}" + (f" ± {sd:.4f} (seed std)" if sd is not None else "")
            for s, (m, sd) in b.items()))
    md += ["", "| " + " | ".join(map(md_text, header)) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in table]
    md += _unpaired_note(rows, run_gains)
    caches = {r.teacher_cache: r for r in rows if r.teacher_cache}
    online = [r for r in rows if r.teacher and not r.teacher_cache]
    md += ["", f"Teacher forward passes: {len(online)} online (one per KD run) and {len(caches)} cached "
               "(one per teacher cache, shared by its runs; the table's teacher KD FLOPs split it among them: "
               "accounting (a) below)."]
    varies = {r.seed_varies for r in rows if r.seed_varies}
    if varies:
        md.append(f"Seeds varied: {md_text(' / '.join(sorted(varies)))}.")
    return md


def _unpaired_note(rows: list[RunRow], run_gains: dict[str, RunGains]) -> list[str]:
    """The footnote of the per-run table's † cells: gains against the baselines' mean, and why."""
    why: dict = {}
    for r in rows:
        for s, reason in run_gains[r.name].unpaired.items():
            why.setdefault((r.student, reason), set()).add(s)
    return ["", "† Against the baselines' mean, not paired: " + "; ".join(
        f"{md_text(student)} on {', '.join(map(md_text, sorted(sets)))}: {reason}"
        for (student, reason), sets in sorted(why.items())) + "."] if why else []


def _finite(x):
    """NaN and infinities as null: report.json is strict JSON."""
    kind = type(x)  # the exact types first: this visits every value of a 10^5-run report
    if kind is str or kind is int or kind is bool or x is None:
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _json_default(x):
    if isinstance(x, tuple):
        return list(x)
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON: {type(x).__name__}")
