"""Megatron-LM checkpoints in and out (one process, TP=1; dist checkpoints reshard on load).

In: an iteration directory of Megatron-LM's torch_dist format becomes a megatron_kd checkpoint
(the same model tensors, our state file, config and model.yaml). Out: a megatron_kd checkpoint
becomes a Megatron-LM save directory, `latest_checkpointed_iteration.txt` and `iter_NNNNNNN/`
written as Megatron-LM's `save_checkpoint` writes it: dist_checkpointing's save of
{"model": the GPTModel's sharded state, "args": the Namespace, "iteration", "checkpoint_version"}.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import yaml

from megatron_kd.checkpoint.checkpointer import (
    check_new_checkpoint_dir,
    checkpoint_record,
    sharded_state,
    write_checkpoint,
)
from megatron_kd.checkpoint.megatron_lm import (
    TRACKER,
    args_unpickling,
    checkpoint_model,
    iteration_dir,
    model_config_to_args,
    read_common_state,
    use_te_names,
)
from megatron_kd.checkpoint.model_io import load_model_weights
from megatron_kd.checkpoint.refs import resolve_checkpoint, saved_config, verify_checkpoint
from megatron_kd.checkpoint.safe_load import read_metadata
from megatron_kd.config import load_config
from megatron_kd.config.schema import ParallelConfig, PrecisionConfig, RunConfig
from megatron_kd.errors import ConfigError
from megatron_kd.files import staged_directory, write_text_atomic
from megatron_kd.models.gpt import build_gpt_model
from megatron_kd.runtime.distributed import init_distributed

CHECKPOINT_VERSION = 3.0  # what Megatron-LM's generate_state_dict writes


def _saved_dtype(args: dict | None) -> str:
    args = args or {}
    return "bf16" if args.get("bf16") else "fp16" if args.get("fp16") else "fp32"


def _sharded_tensors(tree):
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    if isinstance(tree, dict):
        for value in tree.values():
            yield from _sharded_tensors(value)
    elif isinstance(tree, ShardedTensor):
        yield tree


def load_megatron_lm_weights(model, iter_dir: Path) -> None:
    """Load the model of Megatron-LM iteration directory `iter_dir` into `model` (this rank's
    GPTModel, any TP/PP): the pickles are read the restricted way first (nothing in them runs),
    Transformer Engine names mapped onto the local spec's."""
    from megatron.core import dist_checkpointing

    metadata = read_metadata(iter_dir)  # restricted; megatron-core's reader unpickles it after
    read_common_state(iter_dir)  # restricted likewise
    saved = {k: getattr(v, "chunks", ()) for k, v in metadata.state_dict_metadata.items()}
    sharded = model.sharded_state_dict()
    use_te_names(_sharded_tensors(sharded), saved)
    missing = sorted({sh.key for sh in _sharded_tensors(sharded) if sh.key not in saved})
    if missing:
        raise_missing(iter_dir, missing)
    with args_unpickling():  # its common state holds the args, read restricted above
        loaded = dist_checkpointing.load({"model": sharded}, str(iter_dir))
    model.load_state_dict(loaded["model"], strict=True)


def raise_missing(iter_dir: Path, missing: list[str]):
    raise ConfigError(f"{iter_dir} has no {missing[0]}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                      "it is another architecture than the one read for it (vocabulary padding, layers, "
                      "experts): check its args or teacher.model")


def megatron_lm_to_mcore(src: Path, out_dir: Path, model_recipe: str | None = None) -> Path:
    """Convert Megatron-LM checkpoint `src` (a save directory or an iter_* directory) into a
    megatron_kd checkpoint at `out_dir`."""
    iter_dir = iteration_dir(src)
    recipe_model = load_config(model_recipe, purpose="model").model if model_recipe else None
    model_cfg = checkpoint_model(iter_dir, recipe_model)
    common = read_common_state(iter_dir)
    args = vars(common["args"]) if hasattr(common.get("args"), "__dict__") else None
    out_dir = Path(out_dir)
    check_new_checkpoint_dir(out_dir, "output directory")
    if not torch.distributed.is_initialized():
        init_distributed(ParallelConfig(), 0)
    precision = PrecisionConfig(dtype=_saved_dtype(args))
    model = build_gpt_model(model_cfg, ParallelConfig(), precision, pre_process=True, post_process=True)
    print(f"converting {iter_dir} ({model_cfg.num_layers} layers) ...", file=sys.stderr)
    load_megatron_lm_weights(model, iter_dir)
    run = RunConfig(model=model_cfg, precision=precision)
    run.run.name, run.run.dir = f"converted-{iter_dir.parent.name}-{iter_dir.name}", str(out_dir)

    def write_files(stage: Path) -> None:
        from megatron.core import dist_checkpointing

        dist_checkpointing.save(sharded_state(model), str(stage))
        (stage / "model.yaml").write_text(
            "# Model recipe of a converted Megatron-LM checkpoint (usable as teacher.model)\n"
            + yaml.safe_dump({"model": dataclasses.asdict(model_cfg)}, sort_keys=False))

    step = int(common.get("iteration") or 0)
    record = checkpoint_record(run, "converted", step=step, source=str(iter_dir.resolve()),
                               consumed_samples=int((args or {}).get("consumed_train_samples") or 0))
    write_checkpoint(out_dir, run, record, write_files)
    return out_dir


def mcore_to_megatron_lm(checkpoint: Path, out_dir: Path) -> Path:
    """Write a megatron_kd checkpoint (or a run's latest) as a Megatron-LM save directory:
    model weights and args, no optimizer (Megatron-LM loads it with --no-load-optim
    --no-load-rng, or --finetune)."""
    from megatron.core import dist_checkpointing

    ckpt = resolve_checkpoint(checkpoint)
    state = verify_checkpoint(ckpt)
    cfg = saved_config(ckpt, ["parallel.tp=1", "parallel.pp=1", "parallel.vpp=1", "parallel.ep=1",
                              "teacher.checkpoint=null"], purpose="model", state=state)
    out_dir = Path(out_dir)
    check_new_checkpoint_dir(out_dir, "output directory")
    if not torch.distributed.is_initialized():
        init_distributed(ParallelConfig(), 0)
    model = build_gpt_model(cfg.model, cfg.parallel, cfg.precision, pre_process=True, post_process=True)
    load_model_weights(model, ckpt)
    step = int(state["step"])
    model_cfg = dataclasses.replace(cfg.model, padded_vocab_size=state.get("padded_vocab_size")
                                    or cfg.model.padded_vocab_size)
    args = model_config_to_args(model_cfg, cfg.precision.dtype, step, int(state.get("consumed_samples", 0)))
    with staged_directory(out_dir) as stage:
        iter_dir = stage / f"iter_{step:07d}"
        iter_dir.mkdir()
        dist_checkpointing.save({"model": model.sharded_state_dict(), "args": args, "iteration": step,
                                 "checkpoint_version": CHECKPOINT_VERSION,
                                 "num_floating_point_operations_so_far": 0}, str(iter_dir))
        write_text_atomic(stage / TRACKER, str(step))  # last, as Megatron-LM writes it
    return out_dir
