"""`mkd fit`: a sweep's runs (or results tables) -> the law's fit -> law.json and one summary.

Rows are the report's (study/report.collect for a sweep directory, study/table.read_table for a
CSV): a baseline row (no teacher, alpha 0) is a supervised run; a KD row at a fixed alpha is a
distillation run whose teacher's loss is its own validation loss on the same set. Scheduled
alphas are left out (the law is per mix). Every source counts once: the same path or bytes given
twice, or a run in two sources, is refused (it would double the runs and narrow every interval),
and every number a run brings is checked finite and in range where it enters (check_row).
law.json never replaces an input, and replaces an existing file other than an earlier law only
with --overwrite (check_out).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.study.advise import FORMAT
from megatron_kd.study.law import (
    DISTILLATION,
    MAX_FLOPS,
    MAX_PARAMS,
    MAX_TOKENS,
    SUPERVISED,
    Fit,
    Run,
    checked_number,
    fit_distillation,
    fit_supervised,
)
from megatron_kd.study.report import collect
from megatron_kd.study.table import read_table

WEAK = 10.0  # a positive parameter whose bootstrap interval spans more than this factor is weakly identified
# A row's numbers the fit reads or carries: field -> (low, high, low excluded). A teacher's 0
# parameters is the unigram control's (left out of the law, not refused).
ROW_BOUNDS = {
    "student_params": (0, MAX_PARAMS, True), "student_nonembedding_params": (0, MAX_PARAMS, True),
    "teacher_params": (0, MAX_PARAMS, False), "teacher_nonembedding_params": (0, MAX_PARAMS, False),
    "student_tokens": (0, MAX_TOKENS, True), "tokens": (0, MAX_TOKENS, True),
    "teacher_tokens": (0, MAX_TOKENS, False), "alpha": (0, 1, False),
    "student_flops": (0, MAX_FLOPS, False), "teacher_pretrain_flops": (0, MAX_FLOPS, False),
    "teacher_pass_flops": (0, MAX_FLOPS, False), "teacher_pass_shared_by": (0, 1e9, True),
    "temperature": (0, 1e6, True), "top_k": (1, 1e12, False), "seed": (0, 2**32 - 1, False),
    "data_seed": (0, 2**32 - 1, False),
}
_FIX = "fix the run's results (or its table's row) and run `mkd fit` again"


def check_row(r: dict, source: str) -> None:
    """Every number of one run finite and in its range, where it enters the fit: a NaN loss, a
    negative size or an alpha of 5 is one line naming the run and the field, not a fit of garbage."""
    where = f"{source}: run {str(r.get('name'))[:60]!r}"
    for field, (low, high, low_open) in ROW_BOUNDS.items():
        if r.get(field) is not None:
            checked_number(r[field], f"{where} {field}", _FIX, low, high, low_open)
    for into in ("val", "teacher_val"):
        losses = r.get(into) or {}
        if not isinstance(losses, dict):
            raise ConfigError(f"{where} {into}: not a mapping of validation set to loss; {_FIX}")
        for name, loss in losses.items():
            if loss is not None:
                checked_number(loss, f"{where} {into}/{name}", _FIX, 0, None, low_open=True)


def rows_of(sources: list[str]) -> list[dict]:
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
            got = collect(p)[0]
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
            name = r["name"]
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


def runs_of(rows: list[dict], valid_set: str, params: str = "non-embedding",
            max_tokens: float | None = None) -> tuple[list[Run], list[str]]:
    """(runs, notes on what was left out)."""
    key = "student_nonembedding_params" if params == "non-embedding" else "student_params"
    runs, notes, skipped = [], [], {"scheduled α": 0, "beyond max tokens": 0, f"no val/{valid_set}": 0,
                                    "a teacher without a model (the unigram control)": 0}
    for r in rows:
        if r.get(key) is None:
            raise ConfigError(f"run {r['name']} has no {key}; write the sweep's report again with this version "
                              "(`mkd report DIR`) or pass --params total")
        loss = (r.get("val") or {}).get(valid_set)
        if loss is None:
            skipped[f"no val/{valid_set}"] += 1
            continue
        if r.get("alpha_schedule"):
            skipped["scheduled α"] += 1
            continue
        if r.get("teacher") and r.get("teacher_params") == 0:  # its "loss" is not a model's: off the law
            skipped["a teacher without a model (the unigram control)"] += 1
            continue
        if (r.get("student_tokens") or r.get("tokens")) is None:
            raise ConfigError(f"run {r['name']} has no student_tokens; give the tokens each run trained on")
        D = float(r.get("student_tokens") or r.get("tokens"))
        if max_tokens is not None and D > max_tokens:
            skipped["beyond max tokens"] += 1
            continue
        teacher = r.get("teacher")
        if teacher and r.get("alpha"):
            t_loss = (r.get("teacher_val") or {}).get(valid_set)
            if t_loss is None:
                raise ConfigError(f"run {r['name']}: its teacher {teacher} has no validation loss on {valid_set}")
            runs.append(Run(r["name"], float(r[key]), D, float(loss), float(t_loss), float(r["alpha"])))
        elif not teacher:
            runs.append(Run(r["name"], float(r[key]), D, float(loss)))
    notes += [f"left out {n} run(s): {why}" for why, n in skipped.items() if n]
    return runs, notes


def _fit_json(fit: Fit, names) -> dict:
    out = {"params": fit.params, "fixed": fit.fixed, "n_runs": fit.n_runs, "rmse_log": fit.rmse_log,
           "held_out": fit.held_out, "intervals": {k: fit.interval(k) for k in names if k not in fit.fixed},
           "samples": fit.samples}
    out["weakly_identified"] = [k for k, iv in out["intervals"].items()
                                if iv and k != "c0" and iv[0] > 0 and iv[1] / iv[0] > WEAK]
    return out


def fit_law(runs: list[Run], bootstrap: int = 200, seed: int = 0, params: str = "non-embedding",
            valid_set: str = "") -> dict:
    sup_runs = [r for r in runs if r.teacher_loss is None]
    if not sup_runs:
        raise ConfigError("no supervised runs (baselines) to fit the supervised law on; a sweep needs "
                          "`baseline: true` and, for the N and D terms, baselines at several sizes and lengths")
    sup = fit_supervised(runs, bootstrap, seed)
    dist = fit_distillation(runs, sup, bootstrap, seed)
    kd = [r for r in runs if r.teacher_loss is not None]
    return {"format": FORMAT, "parameters": params, "valid_set": valid_set,
            "supervised": _fit_json(sup, SUPERVISED),
            "distillation": {str(a): (_fit_json(f, DISTILLATION) if isinstance(f, Fit) else f)
                             for a, f in dist.items()},
            "ranges": {"N": [min(r.N for r in sup_runs), max(r.N for r in sup_runs)],
                       "D": [min(r.D for r in sup_runs), max(r.D for r in sup_runs)],
                       "teacher_loss": [min(r.teacher_loss for r in kd), max(r.teacher_loss for r in kd)] if kd
                       else None}}


def write_law(law: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(law, indent=1, default=float) + "\n")


def summary(law: dict) -> list[str]:
    sup = law["supervised"]
    p = sup["params"]
    lines = [f"supervised law ({sup['n_runs']} runs, N = {law['parameters']} parameters): L = {p['E']:.4g} + "
             f"({p['A']:.4g}/N^{p['alpha']:.3g} + {p['B']:.4g}/D^{p['beta']:.3g})^{p['gamma']:.3g}; "
             f"rms log-residual {sup['rmse_log']:.2e}"]
    lines += [f"  {k} not identified: {why}" for k, why in sup["fixed"].items()]
    lines += _held_out_line(sup["held_out"])
    if sup["weakly_identified"]:
        lines.append(f"  weakly identified (bootstrap interval over {WEAK:g}x): {', '.join(sup['weakly_identified'])}")
    for a, d in law["distillation"].items():
        if not isinstance(d, dict):
            lines.append(f"distillation law at α={a}: not fitted: {d}")
            continue
        q = d["params"]
        lines.append(f"distillation law at α={a} ({d['n_runs']} runs): c0={q['c0']:.3g} c1={q['c1']:.3g} "
                     f"d1={q['d1']:.3g} f1={q['f1']:.3g}; rms log-residual {d['rmse_log']:.2e}")
        lines += _held_out_line(d["held_out"])
        lines += [f"  {why}" for why in d["fixed"].values()]
        if d["weakly_identified"]:
            lines.append(f"  weakly identified: {', '.join(d['weakly_identified'])} (predictions inside the "
                         "fitted ranges still hold; their values alone say little)")
    return lines


def _held_out_line(h: dict | None) -> list[str]:
    if not h:
        return []
    cell = f"N={h['cell'][0]:.3g}, D={h['cell'][1]:.3g}"
    if "skipped" in h:
        return [f"  held-out check ({cell}): not possible: {h['skipped']}"]
    return [f"  held-out check: fitted without the largest cell ({cell}), it predicts {h['predicted']:.4f} "
            f"against the measured {h['measured']:.4f} (error {h['error']:+.4f} nats, "
            f"{100 * h['relative_error']:+.2f} %)"]
