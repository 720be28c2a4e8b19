"""Each distinct teacher of a sweep evaluated once on the sweep's validation sets (teachers/NAME.json,
read by the report beside the points' losses): a checkpoint through `mkd eval`, the unigram
control from the corpus's token frequencies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from megatron_kd.config import load_config
from megatron_kd.config.overrides import override
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.jsonio import read_json
from megatron_kd.study.jobs import argument_path
from megatron_kd.study.sweep_grid import expand, grid_teachers, short_name
from megatron_kd.study.sweep_progress import say
from megatron_kd.study.sweep_recipes import resolve_point


def evaluate_teachers(spec: dict) -> dict:
    """Each distinct teacher's own validation losses on the sweep's sets (once; cached)."""
    base = load_config(spec["base"], list(spec.get("overrides") or []))
    out = Path(spec["out"]) / "teachers"
    out.mkdir(parents=True, exist_ok=True)
    results, by_checkpoint = {}, {}
    for t in grid_teachers(spec.get("grid") or {}):
        target = by_checkpoint.setdefault(t.get("checkpoint") or "unigram", out / f"{short_name(t['name'])}.json")
        if not target.is_file() and t.get("unigram"):
            reader = next(p for p in expand(spec) if p.teacher is not None and p.teacher.get("unigram"))
            _evaluate_unigram(resolve_point(spec, reader), target)
        elif not target.is_file():  # once per checkpoint
            say(f"[sweep] teacher {t['name']}: evaluating it on {', '.join(base.data.valid) or 'its validation sets'}")
            cmd = [sys.executable, "-m", "megatron_kd", "eval", argument_path(t["checkpoint"]),
                   override("data.valid", base.data.valid), override("train.seq_length", base.train.seq_length),
                   override("logging.eval_samples", base.logging.eval_samples), "--json-out",
                   argument_path(target)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["failed"])[-1]
                raise ConfigError(f"evaluating teacher {t['name']} failed: {last}")
        results[t["name"]] = read_json(target, dict, "teacher evaluation")
    return results


def _evaluate_unigram(cfg, target: Path) -> None:
    """The unigram teacher's own loss on each validation set (of a point that reads it), in the
    file format of `mkd eval --json-out`."""
    from megatron_kd.distill.unigram import unigram_log_probs, unigram_loss  # lazy: numpy and the corpus

    logp = unigram_log_probs(cfg.data.train, cfg.data.train_weights, cfg.model.vocab_size)
    loss = {name: unigram_loss(logp, prefix) for name, prefix in cfg.data.valid.items()}
    write_text_atomic(target, json.dumps({"loss": loss, "teacher": "unigram"}, indent=2))
