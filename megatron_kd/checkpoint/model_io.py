"""Model weights through megatron-core dist_checkpointing (any TP/PP on save and on load)."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_kd.checkpoint.refs import is_checkpoint
from megatron_kd.checkpoint.safe_load import check_checkpoint_pickles
from megatron_kd.errors import ConfigError


def unwrap(model):
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def chunks_of(model) -> list:
    """The GPTModel chunks of `model`: a module, or a list of them (one per virtual pipeline
    stage), wrapped or not."""
    return [unwrap(m) for m in (model if isinstance(model, (list, tuple)) else [model])]


def sharded_model_state(chunks: list) -> dict:
    """The sharded state dict of this rank's model chunks: one chunk's as it is, several
    (virtual pipeline stages) side by side as {"vp0": ..., "vp1": ...}. Every leaf is a tensor
    keyed by its global name (layer numbers included), so weights saved with any number of
    chunks, at any TP/PP, load into any other layout."""
    if len(chunks) == 1:
        return chunks[0].sharded_state_dict()
    return {f"vp{i}": chunk.sharded_state_dict() for i, chunk in enumerate(chunks)}


def load_model_state(chunks: list, state: dict, strict: bool = True) -> None:
    """Put what dist_checkpointing loaded for `sharded_model_state(chunks)` into the chunks."""
    parts = [state] if len(chunks) == 1 else [state[f"vp{i}"] for i in range(len(chunks))]
    for chunk, part in zip(chunks, parts):
        chunk.load_state_dict(part, strict=strict)


def save_model_weights(model, directory: str | Path) -> None:
    """Collective: every rank calls it; writes a resharding-capable checkpoint of the weights
    of `model` (a module or this rank's list of chunks)."""
    from megatron.core import dist_checkpointing

    directory = Path(directory)
    if torch.distributed.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(sharded_model_state(chunks_of(model)), str(directory))


def load_model_weights(model, directory: str | Path, strict: bool = True) -> None:
    """Collective: load weights saved at any TP/PP/VPP into this rank's shard of `model` (a
    module or this rank's list of chunks), from a weights-only checkpoint (save_model_weights)
    or a training checkpoint (its "model" part)."""
    from megatron.core import dist_checkpointing

    chunks = chunks_of(model)
    check_checkpoint_pickles(directory)  # before megatron-core unpickles anything in it
    training_ckpt = is_checkpoint(directory)
    sharded = sharded_model_state(chunks)
    state = dist_checkpointing.load({"model": sharded} if training_ckpt else sharded, str(directory))
    load_model_state(chunks, state["model"] if training_ckpt else state, strict=strict)
    require_finite_weights(chunks, Path(directory))


def require_finite_weights(model, path: Path) -> None:
    """Loaded weights (of a module or a list of chunks) are finite on every rank (a NaN
    written into a shard would otherwise train NaN, or distill a NaN teacher, with no error)."""
    bad = [name for chunk in chunks_of(model) for name, p in chunk.named_parameters()
           if not torch.isfinite(p).all()]
    flag = torch.tensor([1 if bad else 0], dtype=torch.int32)
    if torch.cuda.is_available():
        flag = flag.cuda()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item():
        where = f" ({bad[0]}{' and others' if len(bad) > 1 else ''})" if bad else " (on another rank)"
        raise ConfigError(f"checkpoint {path} holds non-finite weights{where}; it is corrupt: resume "
                          "from an earlier checkpoint")
