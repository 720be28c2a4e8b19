"""`mkd fit`: a sweep's runs (or results tables) -> the law's fit -> law.json and one summary.

Rows are the report's RunRows (study/sweep_dir.collect for a sweep directory, study/table.read_table
for a CSV), each projected by fit_point to the FitPoint the laws fit: a baseline row (no teacher,
alpha 0) is a supervised run; a KD row at a fixed alpha is a distillation run whose teacher's loss
is its own validation loss on the same set. Scheduled alphas are left out (the law is per mix).
Every source counts once: the same path or bytes given twice, or a run in two sources, is refused
(it would double the runs and narrow every interval), and every number a run brings is checked
finite and in range where it enters (check_row). law.json never replaces an input, and replaces an
existing file other than an earlier law only with --overwrite (check_out).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.models.flops import row_flop_params
from megatron_kd.study.law import (
    FORMAT,
    FORMS,
    GAIN_COLUMNS,
    MAX_LOSS,
    PARAMETERS,
    ROW_BOUNDS,
    SUPERVISED,
    Fit,
    FitPoint,
    Progress,
    checked_number,
    fit_supervised,
)
from megatron_kd.study.law_cv import beats_no_effect, fit_distillation, supervised_cv, supervised_refits
from megatron_kd.study.rows import RunRow
from megatron_kd.study.sweep_dir import collect
from megatron_kd.study.table import read_table

WEAK = 10.0  # a positive parameter whose bootstrap interval spans more than this factor is weakly identified
_FIX = "fix the run's results (or its table's row) and run `mkd fit` again"


def check_row(r: RunRow, source: str) -> None:
    """Every number of one run finite and in its range, where it enters the fit: a NaN loss, a
    negative size or an alpha of 5 is one line naming the run and the field, not a fit of garbage."""
    where = f"{source}: run {str(r.name)[:60]!r}"
    for field, (low, high, low_open) in ROW_BOUNDS.items():
        if getattr(r, field) is not None:
            checked_number(getattr(r, field), f"{where} {field}", _FIX, low, high, low_open)
    for into, losses in (("val", r.val), ("teacher_val", r.teacher_val)):
        for name, loss in losses.items():
            if loss is not None:
                checked_number(loss, f"{where} {into}/{name}", _FIX, 0, MAX_LOSS, low_open=True)


def rows_of(sources: list[str]) -> list[RunRow]:
    """Every source's rows; a source given twice (the same path, or a file with the same bytes)
    or a run in two sources is refused: its runs would count twice and narrow every interval."""
    rows, by_path, by_content, run_source = [], {}, {}, {}
    for s in sources:
        p = Path(s)
        resolved = p.resolve()
        if resolved in by_path:
            raise ConfigError(f"{s} is given twice (also as {by_path[resolved]}): its runs would count twice; "
                              "give each sweep directory or table once")
        by_path[resolved] = s
        if p.is_dir():
            got = collect(p)[0]  # each with the sequence length its N (FLOP parameters) was counted at
        elif p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest in by_content:
                raise ConfigError(f"{s} has the same content as {by_content[digest]}: its runs would count "
                                  "twice; give one of the two")
            by_content[digest] = s
            got = read_table(p)[0]
        else:
            raise ConfigError(f"{s} is neither a sweep directory nor a results table; give a sweep's `out` "
                              "directory or a CSV (`mkd report --help` lists its columns)")
        for r in got:
            check_row(r, s)
            name = r.name
            if name in run_source:
                raise ConfigError(f"run {name[:60]!r} is in {run_source[name]} and in {s}: it would count twice; "
                                  "give each run once (leave out one source, or rename the run in one table)")
            run_source[name] = s
        rows += got
    return rows


def is_law(path: Path) -> bool:
    """Was `path` written by `mkd fit` (a JSON object with the law's format marker)?"""
    try:
        if path.stat().st_size > 256 * 2**20:
            return False
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(d, dict) and d.get("format") == FORMAT


def check_out(target: str, sources: list[str], overwrite: bool) -> Path:
    """Where `mkd fit` may write law.json, checked before the fit: never over an input or a file in
    an input sweep directory (`--overwrite` or not), over an earlier law freely, over any other
    existing file only with `overwrite`."""
    out = Path(target)
    if out.is_symlink() or out.is_dir():
        raise ConfigError(f"--out {target} is a directory or a link; give a file path, e.g. --out law.json")
    resolved = out.resolve()
    for s in sources:
        src = Path(s).resolve()
        if resolved == src or (out.is_file() and src.is_file() and os.path.samefile(out, src)):  # a hard link
            raise ConfigError(f"--out {target} is the input {s}: writing the law there would destroy it; "
                              "choose another path, e.g. --out law.json")
        if src.is_dir() and src in resolved.parents and out.exists() and not is_law(out):
            raise ConfigError(f"--out {target} is a file of the input sweep {s}; choose a new file name, e.g. "
                              f"--out {Path(s) / 'law.json'}")
    if out.exists() and not is_law(out) and not overwrite:
        raise ConfigError(f"--out {target} exists and is not a law written by `mkd fit`; it is left as it is: "
                          "choose another path, or pass --overwrite to replace it")
    return out


PARAMETER_WORDS = {"flop": "FLOP parameters (models/flops.py, the report's currency)",
                   "non-embedding": "non-embedding parameters", "total": "total parameters"}


def _size(r: RunRow, who: str, params: str) -> tuple[float | None, bool]:
    """(N of `who` as `params` counts it, whether it is flops.py's fallback: total parameters)."""
    if params == "flop":
        return row_flop_params(r.flop_columns(), who)
    v = getattr(r, f"{who}_nonembedding_params" if params == "non-embedding" else f"{who}_params")
    return (None if v is None else float(v)), False


def fit_point(r: RunRow, valid_set: str, params: str = "flop",
              max_tokens: float | None = None) -> FitPoint | str | None:
    """One run as the fit reads it: a FitPoint (N counted as `params`, D its tokens, its loss on
    `valid_set`; a KD run at a fixed α with its teacher's loss there, α and N_T), or why it is left
    out (a note's words), or None for a KD row at α 0 (neither a baseline nor a mix). A run the fit
    should read but cannot is one line naming it and what it lacks."""
    loss = r.val.get(valid_set)
    if loss is None:
        return f"no val/{valid_set}"
    if r.alpha_schedule:
        return "scheduled α"
    if r.is_auto:  # no one α to put in the law
        return "kd.auto (α set by the run)"
    if r.is_control:  # its "loss" is not a model's: off the law
        return "a teacher without a model (the unigram control)"
    if r.student_tokens is None:
        raise ConfigError(f"run {r.name} has no student_tokens; give the tokens each run trained on")
    D = float(r.student_tokens)
    if max_tokens is not None and D > max_tokens:
        return "beyond max tokens"
    N, is_fallback = _size(r, "student", params)
    if N is None:
        have = ("neither a FLOPs column (flops) nor student_params" if params == "flop"
                else f"no student_{'nonembedding_' if params == 'non-embedding' else ''}params")
        raise ConfigError(f"run {r.name} has {have}: its N ({params} parameters) is unknown; write the "
                          "sweep's report again with this version (`mkd report DIR`) or give the column")
    if not r.teacher:
        return FitPoint(r.name, N, D, float(loss), total_params=is_fallback)
    if not r.alpha:
        return None
    t_loss = r.teacher_val.get(valid_set)
    if t_loss is None:
        raise ConfigError(f"run {r.name}: its teacher {r.teacher} has no validation loss on {valid_set}")
    N_T, t_fallback = _size(r, "teacher", params)
    if N_T is None and params == "flop":
        raise ConfigError(f"run {r.name}: its teacher {r.teacher} has no teacher_pass_flops with the "
                          "student's tokens, nor teacher_params: its FLOP parameters are unknown; give "
                          "the column")
    return FitPoint(r.name, N, D, float(loss), float(t_loss), float(r.alpha), N_T, is_fallback or t_fallback)


def runs_of(rows: list[RunRow], valid_set: str, params: str = "flop",
            max_tokens: float | None = None) -> tuple[list[FitPoint], list[str]]:
    """(the rows' fit points, notes on what was left out). N is `params`: by default a run's FLOP
    parameters (flops.row_flop_params: from its FLOPs column and tokens, else its total parameters)."""
    if params not in PARAMETERS:
        raise ConfigError(f"parameters {str(params)[:40]!r} is not one of {', '.join(PARAMETERS)}")
    points, skipped = [], {"scheduled α": 0, "beyond max tokens": 0, f"no val/{valid_set}": 0,
                           "a teacher without a model (the unigram control)": 0}
    for r in rows:
        got = fit_point(r, valid_set, params, max_tokens)
        if isinstance(got, FitPoint):
            points.append(got)
        elif got is not None:
            skipped[got] = skipped.get(got, 0) + 1
    notes = [f"left out {n} run(s): {why}" for why, n in skipped.items() if n]
    fallback = sum(p.total_params for p in points)
    if fallback:
        notes.append(f"{fallback} run(s) have no FLOPs column: their N is their total parameters (flops.py's "
                     "fallback: the input embedding in, attention out)")
    return points, notes


def seq_length_of(rows: list[RunRow], given: int | None = None) -> tuple[int | None, list[str]]:
    """(the sequence length the runs were at, notes): `given` (--seq-length), else the one length
    the rows carry (a sweep directory's recipes), else None. FLOP parameters depend on it through
    attention, so law.json states it and `mkd advise --student-recipe` counts a recipe at it."""
    seen = {int(r.seq_length) for r in rows if r.seq_length is not None}
    if given is not None:
        if seen - {given}:
            raise ConfigError(f"--seq-length {given}: the sweeps' runs were at {', '.join(map(str, sorted(seen)))}; "
                              "leave --seq-length out, or give their length")
        return given, []
    if len(seen) == 1:
        return seen.pop(), []
    if len(seen) > 1:
        return None, [f"the runs are at several sequence lengths ({', '.join(map(str, sorted(seen)))}): law.json "
                      "records none"]
    return None, ["the sequence length is not recorded (a table has no column for it): pass --seq-length S"]


def _identification(fit: Fit, names) -> dict:
    """name -> how well the runs pin it down: fixed, on a bound, or its bootstrap interval's width."""
    out = {}
    for k in names:
        iv = fit.interval(k)
        if k in fit.fixed:
            out[k] = f"fixed: {fit.fixed[k]}"
        elif k in fit.boundary:
            out[k] = f"on its bound: {fit.boundary[k]}"
        elif iv is None:
            out[k] = "no bootstrap: not assessed"
        elif k in ("c0", "m"):  # signed: judged by the interval's width, not its ratio
            out[k] = "identified" if iv[1] - iv[0] <= 1.0 else f"weak: interval {iv[0]:.3g} to {iv[1]:.3g}"
        elif iv[0] > 0 and iv[1] / iv[0] > WEAK:
            out[k] = f"weak: interval spans {iv[1] / iv[0]:.3g}x"
        elif "gamma" in fit.boundary and k in ("alpha", "beta"):  # on the exponential ridge with gamma
            out[k] = "identified only given γ at its bound (the runs pin α·γ and β·γ)"
        else:
            out[k] = "identified"
    return out


def _fit_json(fit: Fit, names) -> dict:
    free = [k for k in names if k not in fit.fixed]
    out = {"form": fit.form, "params": fit.params, "fixed": fit.fixed, "n_runs": fit.n_runs,
           "rmse_log": fit.rmse_log, "solver": fit.solver, "boundary": fit.boundary, "held_out": fit.held_out,
           "cv": fit.cv, "intervals": {k: fit.interval(k) for k in free},
           "identification": _identification(fit, free), "samples": fit.samples}
    out["weakly_identified"] = [k for k, v in out["identification"].items() if not v.startswith("identified")
                                and not v.startswith("no bootstrap")]
    return out


def measured_gains(runs: list[FitPoint]) -> dict:
    """Each KD run against the mean of its student's baselines at the same (N, D): what the sweep
    measured, kept in law.json so `mkd advise` can show it where no law earns trust."""
    base: dict = {}
    for r in runs:
        if r.teacher_loss is None:
            base.setdefault((r.N, r.D), []).append(r.loss)
    rows = [[r.N, r.D, r.alpha, round(r.teacher_loss, 5), round(r.loss, 5),
             round(float(sum(base[(r.N, r.D)]) / len(base[(r.N, r.D)])), 5)]
            for r in runs if r.teacher_loss is not None and (r.N, r.D) in base]
    return {"columns": list(GAIN_COLUMNS), "rows": sorted(rows)}


def fit_law(runs: list[FitPoint], bootstrap: int = 200, seed: int = 0, params: str = "flop",
            valid_set: str = "", say=None, seq_length: int | None = None) -> dict:
    """law.json: the laws, with what N counts (`parameters`) and the sequence length the runs were
    at (`seq_length`, None where not known; FLOP parameters depend on it through attention)."""
    sup_runs = [r for r in runs if r.teacher_loss is None]
    if not sup_runs:
        raise ConfigError("no supervised runs (baselines) to fit the supervised law on; a sweep needs "
                          "`baseline: true` and, for the N and D terms, baselines at several sizes and lengths")
    progress = Progress(say)
    progress.stage("the supervised law")
    sup = fit_supervised(runs, bootstrap, seed, progress=progress)
    progress.stage("leave-one-cell-out refits")
    refits = supervised_refits(runs, progress)
    sup.cv = supervised_cv(runs, refits)
    dist = fit_distillation(runs, sup, bootstrap, seed, progress, refits)
    kd = [r for r in runs if r.teacher_loss is not None]
    teachers = [r.N_T for r in kd if r.N_T is not None]
    return {"format": FORMAT, "parameters": params, "seq_length": seq_length, "valid_set": valid_set,
            "loss": "plain least squares on log-loss",
            "supervised": _fit_json(sup, SUPERVISED),
            "distillation": {str(a): (_fit_json(f, FORMS[f.form]) if isinstance(f, Fit) else f)
                             for a, f in dist.items()},
            "gains": measured_gains(runs),
            "ranges": {"N": [min(r.N for r in sup_runs), max(r.N for r in sup_runs)],
                       "D": [min(r.D for r in sup_runs), max(r.D for r in sup_runs)],
                       "teacher_loss": [min(r.teacher_loss for r in kd), max(r.teacher_loss for r in kd)] if kd
                       else None, "teacher_N": [min(teachers), max(teachers)] if teachers else None}}


def write_law(law: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(law, indent=1, default=float) + "\n")


def summary(law: dict) -> list[str]:
    sup = law["supervised"]
    p = sup["params"]
    seq = law.get("seq_length")
    lines = [f"supervised law ({sup['n_runs']} runs, N = {PARAMETER_WORDS[law['parameters']]}"
             f"{f' at sequence length {seq}' if seq else ''}): L = {p['E']:.4g} + "
             f"({p['A']:.4g}/N^{p['alpha']:.3g} + {p['B']:.4g}/D^{p['beta']:.3g})^{p['gamma']:.3g}; "
             f"rms log-residual {sup['rmse_log']:.2e}", _solver_line(sup)]
    lines += [f"  {k} not identified: {why}" for k, why in sup["fixed"].items()]
    lines += [f"  on a bound: {why}" for why in sup["boundary"].values()]
    lines += _held_out_line(sup["held_out"])
    if sup["cv"] and sup["cv"]["law_rmse_log"] is not None:
        lines.append(f"  leave-one-cell-out rms log-error {100 * sup['cv']['law_rmse_log']:.2f} % "
                     f"({sup['cv']['runs']} runs)")
    if sup["weakly_identified"]:
        lines.append(f"  weakly identified (bootstrap interval over {WEAK:g}x, or on a bound): "
                     f"{', '.join(sup['weakly_identified'])}")
    for a, d in law["distillation"].items():
        if not isinstance(d, dict):
            lines.append(f"distillation law at α={a}: not fitted: {d}")
            continue
        q = ", ".join(f"{k}={v:.3g}" for k, v in d["params"].items())
        lines.append(f"distillation law at α={a} ({d['n_runs']} runs), form {d['form']}: {q}; rms log-residual "
                     f"{d['rmse_log']:.2e}")
        lines.append(_solver_line(d))
        lines.append(_cv_line(d["cv"]))
        lines += [f"  {why}" for why in d["fixed"].values()]
        lines += [f"  on a bound: {why}" for why in d["boundary"].values()]
        if d["weakly_identified"]:
            lines.append(f"  weakly identified: {', '.join(d['weakly_identified'])} (predictions inside the "
                         "fitted ranges still hold; their values alone say little)")
    return lines


def _solver_line(d: dict) -> str:
    s = d["solver"]
    return (f"  optimiser: {s['message']} (status {s['status']}, {s['nfev']} evaluations); a restart from the "
            f"optimum lowers the cost by {100 * max(s['refit_drop'], 0.0):.2g} %")


def _cv_line(cv: dict) -> str:
    verdict = "beats" if beats_no_effect(cv) else "does NOT beat"
    return (f"  leave-one-cell-out ({cv['cells']} cells, {cv['runs']} runs): rms log-error "
            f"{100 * cv['law_rmse_log']:.2f} %; ignoring the teacher (the supervised law) "
            f"{100 * cv['no_effect_rmse_log']:.2f} %: the law {verdict} no effect")


def _held_out_line(h: dict | None) -> list[str]:
    if not h:
        return []
    cell = f"N={h['cell'][0]:.3g}, D={h['cell'][1]:.3g}"
    if "skipped" in h:
        return [f"  held-out check ({cell}): not possible: {h['skipped']}"]
    return [f"  held-out check: fitted without the largest cell ({cell}), it predicts {h['predicted']:.4f} "
            f"against the measured {h['measured']:.4f} (error {h['error']:+.4f} nats, "
            f"{100 * h['relative_error']:+.2f} %)"]
