"""Model weights through megatron-core dist_checkpointing (any TP/PP on save and on load)."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_kd.checkpoint.refs import is_checkpoint
from megatron_kd.errors import ConfigError


def unwrap(model):
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def save_model_weights(model, directory: str | Path) -> None:
    """Collective: every rank calls it; writes a resharding-capable checkpoint of the weights."""
    from megatron.core import dist_checkpointing

    directory = Path(directory)
    if torch.distributed.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(unwrap(model).sharded_state_dict(), str(directory))


def load_model_weights(model, directory: str | Path, strict: bool = True) -> None:
    """Collective: load weights saved at any TP/PP into this rank's shard of `model`, from a
    weights-only checkpoint (save_model_weights) or a training checkpoint (its "model" part)."""
    from megatron.core import dist_checkpointing

    inner = unwrap(model)
    training_ckpt = is_checkpoint(directory)
    sharded = {"model": inner.sharded_state_dict()} if training_ckpt else inner.sharded_state_dict()
    state = dist_checkpointing.load(sharded, str(directory))
    inner.load_state_dict(state["model"] if training_ckpt else state, strict=strict)
    require_finite_weights(inner, Path(directory))


def require_finite_weights(model, path: Path) -> None:
    """Loaded weights are finite on every rank (a NaN written into a shard would otherwise
    train NaN, or distill a NaN teacher, with no error)."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    flag = torch.tensor([1 if bad else 0], dtype=torch.int32)
    if torch.cuda.is_available():
        flag = flag.cuda()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item():
        where = f" ({bad[0]}{' and others' if len(bad) > 1 else ''})" if bad else " (on another rank)"
        raise ConfigError(f"checkpoint {path} holds non-finite weights{where}; it is corrupt: resume "
                          "from an earlier checkpoint")
