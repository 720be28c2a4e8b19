"""Body of the Checkpointer's save and load round trip (one gloo rank, the tiny model on mock
data): two steps, a save, then the run's start as `mkd train` makes it, in a fresh state."""

from __future__ import annotations

from pathlib import Path

import torch


def _params(state) -> list[torch.Tensor]:
    return [p.detach().clone() for chunk in state.model for p in chunk.parameters()]


def _adam_moments(state) -> list[torch.Tensor]:
    """Adam's moments of every parameter, in order ([] before the first step)."""
    opt = state.optimizer.optimizer
    return [opt.state[p][k].clone() for g in opt.param_groups for p in g["params"] if p in opt.state
            for k in ("exp_avg", "exp_avg_sq")]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b))


def save_then_load(workdir: str) -> dict:
    from megatron_kd.checkpoint.checkpointer import Checkpointer, SaveDue
    from megatron_kd.config import load_config
    from megatron_kd.data.batches import schedule_iterators
    from megatron_kd.data.datasets import build_datasets, load_tokenizer
    from megatron_kd.runtime.distributed import init_distributed, shutdown
    from megatron_kd.training.loop import train_step
    from megatron_kd.training.setup import build_train_state

    cfg = load_config("train/tiny-mock", [f"run.dir={Path(workdir) / 'run'}", "train.steps=4"])
    init_distributed(cfg.parallel, cfg.run.seed)
    tokenizer = load_tokenizer(cfg)
    train_ds, _ = build_datasets(cfg, tokenizer, 4 * cfg.train.global_batch_size)
    trained = build_train_state(cfg)
    trained.tokenizer_info = tokenizer.describe()
    data = schedule_iterators(train_ds, cfg.train.micro_batch_size, 0, 1, len(trained.model))
    for _ in range(2):
        train_step(cfg, trained, data)
    saved = Checkpointer(cfg).save(trained, SaveDue("step_0000002", "periodic"), None)
    saved_weights = _params(trained)

    checkpointer = Checkpointer(cfg)  # a new launch of the same run
    resumed = build_train_state(cfg)
    info = checkpointer.load(resumed, checkpointer.resume_point())
    out = {"saved": str(saved), "resume_from": str(info.path), "resumed": info.resumed,
           "loaded": [info.step, info.consumed_samples], "state_before_start": [resumed.step, resumed.consumed_samples],
           "weights": _same(saved_weights, _params(resumed)),
           "moments": _same(_adam_moments(trained), _adam_moments(resumed))}
    resumed.step, resumed.consumed_samples = info.step, info.consumed_samples  # as run_training starts it
    again = schedule_iterators(train_ds, cfg.train.micro_batch_size, 0, 1, len(resumed.model),
                               consumed_samples=resumed.consumed_samples)
    out["next_loss"] = [train_step(cfg, trained, data)["loss"], train_step(cfg, resumed, again)["loss"]]

    weights_only = load_config("train/tiny-mock", [f"run.dir={Path(workdir) / 'run2'}", f"checkpoint.load={saved}"])
    initial = Checkpointer(weights_only)
    started = build_train_state(weights_only)
    first = initial.load(started, initial.resume_point())
    out["initial"] = {"resumed": first.resumed, "step": started.step, "moments": len(_adam_moments(started)),
                      "weights": _same(saved_weights, _params(started))}
    shutdown()
    return out
