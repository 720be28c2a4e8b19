"""A sweep directory read into the report's rows (one per finished run): each point of its
points.json with its run's final validation losses and curve (metrics.jsonl), its resolved
recipe's sizes and FLOPs, its teacher's and the teacher's own losses (teachers/NAME.json).
`mkd report SWEEP_DIR` and `mkd fit SWEEP_DIR` read a sweep through it; a results table is
table.py's. A hand-edited file fails as one line naming the file and field."""

from __future__ import annotations

import logging
from pathlib import Path

from megatron_kd.config import load_config
from megatron_kd.distill.teacher import resolve_teacher
from megatron_kd.errors import ConfigError
from megatron_kd.jsonio import read_json, read_jsonl, require_fields
from megatron_kd.models.flops import run_flops
from megatron_kd.models.params import count_parameters
from megatron_kd.study.rows import RunRow, frozen_curve, frozen_losses

log = logging.getLogger("megatron_kd")

# What the report reads of each file (hand-edited ones fail as one line naming file and field).
POINT_FIELDS = {"name": str, "student": str}  # every point `mkd sweep` writes names its student
POINT_OPTIONAL = {"teacher": str, "alpha": float, "temperature": float, "kind": str,
                  "top_k": int, "teacher_tokens": (int, float), "teacher_cache": str, "cache_args": str,
                  "alpha_schedule": str, "auto_ceiling": float,
                  "teacher_model": str, "seed": int, "seed_varies": str, "baseline_steps": int,
                  "student_steps": int}
# the point fields (points.json) a run's row keeps
_POINT_ROW_FIELDS = ("name", "student", "teacher", "alpha", "alpha_schedule", "auto_ceiling", "temperature", "kind",
                     "top_k", "seed", "seed_varies", "student_steps", "baseline_steps", "teacher_model",
                     "teacher_tokens", "teacher_cache", "cache_args")
_RERUN = "fix the line or re-run the point (`mkd sweep ... --local --only NAME`)"


def _final(run_dir: Path) -> dict | None:
    f = run_dir / "metrics.jsonl"
    if not f.is_file():
        return None
    rows = read_jsonl(f)
    if not rows:
        return None
    for i, r in enumerate(rows):  # every line the report reads: the curve's and the last
        val = {k: v for k, v in r.items() if k.startswith("val/")}
        if val or i == len(rows) - 1:
            require_fields(r, {"tokens": int, **{k: float for k in val}}, f"{f} (record {i + 1})", _RERUN)
    vals = [r for r in rows if any(k.startswith("val/") for k in r)]
    return {"last": rows[-1], "final_val": vals[-1] if vals else {}, "curve": vals}


def _teacher_eval(f: Path) -> dict:
    t = read_json(f, dict, "teacher evaluation")
    fix = "delete it (the sweep evaluates the teacher again)"
    require_fields(t, {}, f"teacher evaluation {f}", fix, optional={"loss": dict})
    require_fields(t.get("loss") or {}, {}, f"teacher evaluation {f} 'loss'", fix,
                   optional={k: float for k in t.get("loss") or {}})
    return t


def collect(sweep_dir: Path) -> tuple[list[RunRow], dict, list[str]]:
    if not (sweep_dir / "points.json").is_file():
        raise ConfigError(f"{sweep_dir} is not a sweep directory (no points.json); give the `out` "
                          "directory of a sweep, after `mkd sweep SWEEP.yaml --local` or --slurm")
    points = read_json(sweep_dir / "points.json", list, "sweep points")
    for i, p in enumerate(points):
        require_fields(p, POINT_FIELDS, f"{sweep_dir / 'points.json'} point {i + 1}",
                       "re-create it with `mkd sweep SWEEP.yaml`", optional=POINT_OPTIONAL)
    teachers = {}
    for f in (sweep_dir / "teachers").glob("*.json") if (sweep_dir / "teachers").is_dir() else []:
        teachers[f.stem] = _teacher_eval(f)
    fields, sets, no_val = [], set(), []
    for p in points:
        run = sweep_dir / "runs" / p["name"]
        res = _final(run)
        if res is None:
            continue
        if not res["curve"]:  # e.g. its last line (the final validation) was cut short
            log.warning("run %s has no validation loss in %s (cut short?); left out of the report",
                        p["name"], run / "metrics.jsonl")
            no_val.append(p["name"])
            continue
        vals = {k[4:]: v for k, v in res["final_val"].items() if k.startswith("val/")}
        sets |= set(vals)
        fields.append(_run_fields(sweep_dir, p, res, vals, teachers))
    _share_cache_passes(fields)
    if not fields and no_val:
        raise ConfigError(f"no run under {sweep_dir}/runs has a validation loss ({', '.join(no_val)[:300]}: "
                          "its metrics.jsonl has no val/ line, cut short?); re-run the point(s) with "
                          "`mkd sweep ... --local`")
    if not fields:
        raise ConfigError(f"no finished runs under {sweep_dir}/runs; run `mkd sweep ... --local` first")
    return [RunRow(**f) for f in fields], teachers, sorted(sets)


def _run_fields(sweep_dir: Path, p: dict, res: dict, vals: dict, teachers: dict) -> dict:
    """One finished point's RunRow fields: the point's own, its losses and curve, and the sizes and
    FLOPs of its resolved recipe (its teacher's too)."""
    cfg = load_config(sweep_dir / "recipes" / f"{p['name']}.yaml")
    tokens = res["last"]["tokens"]
    row = {**{k: p[k] for k in _POINT_ROW_FIELDS if k in p},
           "val": frozen_losses(vals), "student_tokens": tokens, "curve": frozen_curve(res["curve"]),
           "data_seed": cfg.data.seed, "seq_length": cfg.train.seq_length, "teacher_tokens": p.get("teacher_tokens"),
           "temperature": p.get("temperature", cfg.kd.temperature if p.get("teacher") else None),
           "kind": p.get("kind", cfg.kd.kind if p.get("teacher") else None),
           "student_flops": run_flops(cfg.model, cfg.train.seq_length, tokens).student,
           "student_params": count_parameters(cfg.model).total,
           "student_nonembedding_params": count_parameters(cfg.model).non_embedding}
    if p.get("teacher") and cfg.teacher.unigram:  # no model: no parameters, no forward, no training
        row.update(teacher_params=0, teacher_nonembedding_params=0, teacher_pass_flops=0.0,
                   teacher_pretrain_flops=0.0, teacher_tokens=None,
                   teacher_val=frozen_losses((teachers.get(p["teacher"].replace("/", "-")) or {}).get("loss", {})))
    elif p.get("teacher"):
        _, tm, state = resolve_teacher(cfg, check=False)  # its model and token count only
        row["teacher_params"] = count_parameters(tm).total
        row["teacher_nonembedding_params"] = count_parameters(tm).non_embedding
        t_tokens = p.get("teacher_tokens") or state.get("tokens") or 0
        flops = run_flops(cfg.model, cfg.train.seq_length, tokens, tm, t_tokens)
        row["teacher_pass_flops"] = flops.teacher_pass  # forward only, over this run's stream
        row["teacher_pretrain_flops"] = flops.teacher_pretrain
        row["teacher_tokens"] = t_tokens or None
        t_eval = teachers.get(p["teacher"].replace("/", "-"))
        row["teacher_val"] = frozen_losses((t_eval or {}).get("loss", {}))
    return row


def _share_cache_passes(rows: list[dict]) -> None:
    """A cache is one teacher forward over its longest reader's stream, shared by its readers:
    each run's share of it, as `teacher_pass_shared_by` (this run's own pass / its share), so
    that readers of several lengths (grid.steps) are charged the one pass that was made. Filled
    into the rows' fields before they become RunRows."""
    by_cache: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("teacher_cache") and r.get("teacher_pass_flops"):
            by_cache.setdefault(r["teacher_cache"], []).append(r)
    for readers in by_cache.values():
        longest = max(r["student_tokens"] for r in readers)
        for r in readers:
            r["teacher_pass_shared_by"] = len(readers) * r["student_tokens"] / longest
