"""`mkd init RECIPE --out DIR`: a seed checkpoint — the recipe's initial student weights (drawn
from run.seed by models/init.py, the same at any layout) written once as a step-0
dist_checkpointing checkpoint that loads at any TP/PP (`checkpoint.load=DIR`). For large models
it saves every later run (and every rank) the draw; the weights are the ones a run from
scratch starts with either way."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from megatron_kd.checkpoint.model_io import save_model_weights, sharded_model_state
from megatron_kd.checkpoint.refs import write_state
from megatron_kd.config import dump_config, padded_vocab
from megatron_kd.config.schema import RunConfig
from megatron_kd.errors import ConfigError
from megatron_kd.models.gpt import build_gpt_chunks


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty directory; choose a new one")


def write_seed_checkpoint(cfg: RunConfig, out: Path) -> Path:
    """Collective (every rank of the launch): build this rank's stage with the layout-free
    initial weights and save the whole model to `out` (written to OUT.partial, then renamed)."""
    rank = torch.distributed.get_rank()
    partial = out.with_name(out.name + ".partial")
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    torch.distributed.barrier()
    model = build_gpt_chunks(cfg.model, cfg.parallel, cfg.precision, init_seed=cfg.run.seed)
    # dist_checkpointing's "model" part, as training checkpoints have it (checkpoint.load reads both)
    save_model_weights(_ModelPart(model), partial)
    torch.distributed.barrier()
    if rank == 0:
        dump_config(cfg, partial / "config.yaml")
        write_state(partial, {"step": 0, "consumed_samples": 0, "tokens": 0, "kind": "init",
                              "seed": cfg.run.seed, "world_size": torch.distributed.get_world_size(),
                              "parallel": {"tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "vpp": cfg.parallel.vpp},
                              "padded_vocab_size": padded_vocab(cfg.model, cfg.parallel.tp),
                              "tokenizer": None})
        if out.exists():
            out.rmdir()  # empty (checked before start)
        partial.rename(out)
    torch.distributed.barrier()
    return out


class _ModelPart(torch.nn.Module):
    """Wraps a model so its sharded state dict sits under "model" (a training checkpoint's layout)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def sharded_state_dict(self):
        return {"model": sharded_model_state(self.inner)}
