"""`mkd fit`: a sweep's runs (or results tables) -> the law's fit -> law.json and one summary.

Rows are the report's (study/report.collect for a sweep directory, study/table.read_table for a
CSV): a baseline row (no teacher, alpha 0) is a supervised run; a KD row at a fixed alpha is a
distillation run whose teacher's loss is its own validation loss on the same set. Scheduled
alphas are left out (the law is per mix).
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.study.advise import FORMAT
from megatron_kd.study.law import DISTILLATION, SUPERVISED, Fit, Run, fit_distillation, fit_supervised
from megatron_kd.study.report import collect
from megatron_kd.study.table import read_table

WEAK = 10.0  # a positive parameter whose bootstrap interval spans more than this factor is weakly identified


def rows_of(sources: list[str]) -> list[dict]:
    rows = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            rows += collect(p)[0]
        elif p.is_file():
            rows += read_table(p)[0]
        else:
            raise ConfigError(f"{s} is neither a sweep directory nor a results table; give a sweep's `out` "
                              "directory or a CSV (`mkd report --help` lists its columns)")
    return rows


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
