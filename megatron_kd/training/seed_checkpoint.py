"""`mkd init RECIPE --out DIR`: a seed checkpoint — the recipe's initial student weights (drawn
from run.seed by models/init.py, the same at any layout) written once as a step-0
dist_checkpointing checkpoint that loads at any TP/PP (`checkpoint.load=DIR`). For large models
it saves every later run (and every rank) the draw; the weights are the ones a run from
scratch starts with either way."""

from __future__ import annotations

from pathlib import Path

from megatron_kd.checkpoint.checkpointer import (
    checkpoint_record,
    sharded_state,
    write_checkpoint,
)
from megatron_kd.config.schema import RunConfig
from megatron_kd.models.gpt import build_gpt_chunks


def write_seed_checkpoint(cfg: RunConfig, out: Path) -> Path:
    """Collective (every rank of the launch): build this rank's stage with the layout-free
    initial weights and save the whole model to `out` (the "model" part of a training
    checkpoint, which checkpoint.load reads)."""
    from megatron.core import dist_checkpointing

    model = build_gpt_chunks(cfg.model, cfg.parallel, cfg.precision, init_seed=cfg.run.seed)
    record = checkpoint_record(cfg, "init", seed=cfg.run.seed)
    return write_checkpoint(out, cfg, record, lambda stage: dist_checkpointing.save(sharded_state(model), str(stage)))
