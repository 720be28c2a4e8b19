"""Validation loss on named sets through megatron-core's forward-only schedule."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from megatron_kd.config.schema import RunConfig
from megatron_kd.data.batches import MicroBatchIterator


def evaluate(cfg: RunConfig, model_chunks: list, valid_sets: dict) -> dict[str, float]:
    """Mean per-token LM loss of each validation set (the same number on every rank).

    Each set's first `n` sequences (n from build_datasets, rounded down to whole micro-batches
    over the data-parallel ranks) are evaluated, in order, every time.
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_kd.training.steps import (
        StepContext,
        broadcast_from_last_stage,
        make_forward_step,
        reduce_reports,
    )

    model_chunks = student_chunks(model_chunks)
    forward_step = make_forward_step(StepContext())

    dp = parallel_state.get_data_parallel_world_size()
    micro = cfg.train.micro_batch_size
    for chunk in model_chunks:
        chunk.eval()
    results = {}
    try:
        for name, (dataset, n) in valid_sets.items():
            num_micro = max(1, n // (micro * dp))
            it = MicroBatchIterator(dataset, micro, parallel_state.get_data_parallel_rank(), dp)
            with torch.no_grad():
                reports = get_forward_backward_func()(
                    forward_step_func=forward_step, data_iterator=it, model=model_chunks,
                    num_microbatches=num_micro, seq_length=cfg.train.seq_length,
                    micro_batch_size=micro, forward_only=True)
            value = reduce_reports(reports).get("lm loss", math.nan) \
                if parallel_state.is_pipeline_last_stage() else math.nan
            results[name] = broadcast_from_last_stage({"v": value}, ["v"])["v"]
    finally:
        for chunk in model_chunks:
            chunk.train()
    return results


def student_chunks(model_chunks: list) -> list:
    """The student alone (validation is the student's LM loss; no teacher forward)."""
    from megatron_kd.distill.model import DistillationModel

    out = []
    for chunk in model_chunks:
        inner = getattr(chunk, "module", chunk)
        out.append(inner.module if isinstance(inner, DistillationModel) else chunk)
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (then its latest checkpoint)."""
    from megatron_kd.checkpoint.manager import STATE_FILE, latest_checkpoint
    from megatron_kd.errors import ConfigError

    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    latest = latest_checkpoint(path / "checkpoints")
    if latest is not None:
        return latest
    raise ConfigError(f"'{path}' is neither a checkpoint nor a run directory with checkpoints; "
                      "pass RUN_DIR or RUN_DIR/checkpoints/NAME")


def run_eval(cfg: RunConfig, checkpoint: Path, tasks: list[str] | None = None,
             include_path: str | None = None, limit: int | None = None) -> dict:
    """Load `checkpoint` into the layout of `cfg` and evaluate its validation sets, and with
    `tasks` the lm-eval harness tasks too."""
    import json

    from megatron_kd.checkpoint.manager import load_checkpoint
    from megatron_kd.data.datasets import build_datasets, load_tokenizer
    from megatron_kd.training.setup import TrainState, build_ddp_model

    tokenizer = load_tokenizer(cfg)
    state = TrainState(model=build_ddp_model(cfg), optimizer=None, scheduler=None)
    info = load_checkpoint(checkpoint, state, load_optimizer=False)
    _, valid = build_datasets(cfg, tokenizer, cfg.train.global_batch_size)
    losses = evaluate(cfg, state.model, valid)
    tasks_out = None
    if tasks:
        from megatron_kd.checkpoint.model_io import unwrap
        from megatron_kd.errors import ConfigError
        from megatron_kd.study.lm_eval_adapter import run_tasks

        if cfg.parallel.pp != 1:
            raise ConfigError("--tasks runs with parallel.pp=1 (any TP); set parallel.pp=1")
        student = unwrap(state.model[0]).eval()
        tasks_out = run_tasks(student, tokenizer, cfg, tasks, include_path, limit)
    result = {"checkpoint": str(checkpoint), "step": info.step, "tokens": info.tokens,
              "seq_length": cfg.train.seq_length, "tp": cfg.parallel.tp, "pp": cfg.parallel.pp,
              "loss": losses, "perplexity": {k: math.exp(min(v, 50.0)) for k, v in losses.items()},
              "sequences": {k: n for k, (_, n) in valid.items()}}
    if tasks_out is not None:
        result["tasks"] = tasks_out
    if torch.distributed.get_rank() == 0:
        out = checkpoint.parent.parent / "eval" / f"{checkpoint.name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        result["written"] = str(out)
    return result
