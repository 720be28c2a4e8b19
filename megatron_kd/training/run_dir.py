"""A run directory holds one run: starting a *different* run in it is refused (unless
--overwrite), so a typo in run.dir never resumes from, or overwrites, someone else's work."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from megatron_kd.config.loader import config_to_dict
from megatron_kd.config.schema import RunConfig
from megatron_kd.errors import ConfigError

# What may change between starts of the same run: its length, layout, logging and saving.
_MAY_CHANGE = ("run.name", "run.dir", "parallel.", "logging.", "checkpoint.", "train.steps",
               "train.tokens", "train.stop_at_step", "model.padded_vocab_size", "data.valid",
               "train.max_consecutive_skips", "kd.teacher_metrics", "kd.chunk_size",
               "kd.fused_output_layer")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "valid":
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def check_run_dir(cfg: RunConfig, overwrite: bool, delete: bool = True) -> None:
    """Raise unless RUN_DIR is empty, holds this same run (resume), or overwrite is asked."""
    run_dir = Path(cfg.run.dir)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"run.dir {run_dir} is a file; choose a directory")
        return
    old = _flat(yaml.safe_load(saved.read_text()) or {})
    new = _flat(config_to_dict(cfg))
    diff = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and not k.startswith(_MAY_CHANGE))
    if not diff:
        return
    if overwrite:
        if not delete:
            return
        for sub in ("checkpoints", "tensorboard", "eval", "analyze", "data_cache"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        return
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
    raise ConfigError(f"run.dir {run_dir} holds a different run ({shown}"
                      f"{', ...' if len(diff) > 3 else ''}); use another run.dir, or pass "
                      "--overwrite to discard it")
