"""`mkd eval`: a checkpoint's validation losses at any layout, and lm-eval harness tasks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from megatron_kd.checkpoint.checkpointer import load_checkpoint
from megatron_kd.checkpoint.model_io import unwrap
from megatron_kd.config.schema import RunConfig
from megatron_kd.data.datasets import build_datasets, load_tokenizer
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.training.evaluate import evaluate
from megatron_kd.training.setup import TrainState, build_ddp_model


def run_eval(cfg: RunConfig, checkpoint: Path, tasks: list[str] | None = None,
             include_path: str | None = None, limit: int | None = None) -> dict:
    """Load `checkpoint` into the layout of `cfg` and evaluate its validation sets, and with
    `tasks` the lm-eval harness tasks too."""
    tokenizer = load_tokenizer(cfg)
    state = TrainState(model=build_ddp_model(cfg), optimizer=None, scheduler=None)
    info = load_checkpoint(checkpoint, state, load_optimizer=False)
    _, valid = build_datasets(cfg, tokenizer, cfg.train.global_batch_size)
    losses = evaluate(cfg, state.model, valid)
    tasks_out = None
    if tasks:
        from megatron_kd.evals.lm_eval_adapter import run_tasks  # lazy: lm-eval is optional (and ~3 s to import)

        if cfg.parallel.pp != 1:
            raise ConfigError("--tasks runs with parallel.pp=1 (any TP); set parallel.pp=1 parallel.vpp=1")
        student = unwrap(state.model[0]).eval()
        tasks_out = run_tasks(student, tokenizer, cfg, tasks, include_path, limit)
    result = {"checkpoint": str(checkpoint), "step": info.step, "tokens": info.tokens,
              "seq_length": cfg.train.seq_length, "tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "vpp": cfg.parallel.vpp,
              "loss": losses, "perplexity": {k: math.exp(min(v, 50.0)) for k, v in losses.items()},
              "sequences": {k: n for k, (_, n) in valid.items()}}
    if tasks_out is not None:
        result["tasks"] = tasks_out
    if torch.distributed.get_rank() == 0:
        out = checkpoint.parent.parent / "eval" / f"{checkpoint.name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(result, indent=2))
        result["written"] = str(out)
    return result
