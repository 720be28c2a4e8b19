"""A sweep's points as resolved recipes in its directory (recipes/NAME.yaml, points.json, its
registered primary.json), and the recipe a teacher's cache job runs."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_kd.config import dump_config, load_config, validate
from megatron_kd.config.overrides import override
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.study.sweep_grid import Point, expand, select

PRIMARY_FILE = "primary.json"  # in a sweep directory: its `primary:` block


def resolve_point(spec: dict, point: Point):
    """The full config of one point (student model from its recipe, run dir in the sweep)."""
    run_dir = str(Path(spec["out"]) / "runs" / point.name)
    cfg = load_config(spec["base"], point.overrides + [override("run.name", point.name), override("run.dir", run_dir)])
    if point.student:
        # The sweep's own model.* overrides (e.g. model.hidden_dropout) hold for every student too.
        model_overrides = [o for o in point.overrides if o.partition("=")[0].strip().startswith("model.")]
        model_part = load_config(point.student, model_overrides, purpose="model").model
        cfg.model = model_part
        # re-validate the combination (e.g. heads vs TP) with the student swapped in
        validate(cfg)
    if point.teacher is None:
        cfg.teacher.checkpoint = None
        cfg.teacher.cache = None
        cfg.teacher.unigram = False
    if cfg.logging.wandb.project:  # W&B groups the sweep's runs; the point's coordinates are run config
        cfg.logging.wandb.group = cfg.logging.wandb.group or spec["name"]
        cfg.logging.wandb.name = point.name
        cfg.logging.wandb.point = {k: v for k, v in point.meta.items()
                                   if k in ("student", "teacher", "teacher_tokens", "alpha", "alpha_schedule",
                                            "auto_ceiling", "temperature", "kind", "top_k", "seed", "seed_varies")}
    return cfg


def write_recipes(spec: dict, only: list[str] | None = None) -> list[tuple[Point, Path]]:
    """One resolved recipe per point (those matching `only`, a list of globs, when given)."""
    out = Path(spec["out"])
    all_points = expand(spec)
    # Every point resolves (and validates) before anything is written: a bad point leaves no
    # half-written sweep directory behind.
    resolved = [(point, resolve_point(spec, point)) for point in select(all_points, only)]
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    written = []
    for point, cfg in resolved:
        path = out / "recipes" / f"{point.name}.yaml"
        dump_config(cfg, path)
        written.append((point, path))
    # points.json lists the whole grid: the report reads it, whatever subset ran this time.
    write_text_atomic(out / "points.json", json.dumps([{"name": p.name, **p.meta} for p in all_points], indent=2))
    # The registered primary contrasts (null without a `primary:` block): `mkd report SWEEP_DIR`
    # reads the claims through them, as the sweep's own report does.
    write_text_atomic(out / PRIMARY_FILE, json.dumps(spec.get("primary")) + "\n")
    return written


def cache_recipe(spec: dict, cache: str) -> Path:
    """The recipe a teacher's cache job runs: that of a point reading the cache. Every reader of
    one cache has one length (a cache per teacher and student length of grid.steps): a run from a
    cache builds its data stream for the cache's sample count (training/loop.py), and its paired
    baseline builds one for its own length, so a cache built for a longer run would feed the KD
    points another stream than their baselines once the longer run crosses an epoch of the data
    (megatron-core shuffles a stream by its number of epochs)."""
    users = [p for p in expand(spec) if p.meta.get("teacher_cache") == cache]
    if not users:
        raise ConfigError(f"no point of sweep {spec['_path']} reads the teacher cache {cache}")
    path = Path(cache).with_name(f"{Path(cache).name}.recipe.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    dump_config(resolve_point(spec, users[0]), path)
    return path
