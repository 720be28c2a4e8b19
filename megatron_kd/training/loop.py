"""The pretraining loop: megatron-core's pipeline schedules, DDP and optimizer.

`run_training` is what `mkd train` runs on every rank after the process groups are up.
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial
from pathlib import Path

import torch

from megatron_kd.config import dump_config
from megatron_kd.config.schema import RunConfig
from megatron_kd.data.batches import MicroBatchIterator
from megatron_kd.data.datasets import build_train_valid_datasets
from megatron_kd.training.setup import TrainState, build_train_state

log = logging.getLogger("megatron_kd.train")


def lm_loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Sum of per-token CE over unmasked tokens, the token count, and a report entry."""
    losses = output_tensor.float()
    mask = loss_mask.float()
    loss_sum = torch.sum(losses.view(-1) * mask.view(-1))
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), num_tokens.detach().float()])
    return loss_sum, num_tokens, {"lm loss": report}


def forward_step(data_iterator, model):
    """One micro-batch through the model; megatron-core schedules call this."""
    batch = next(data_iterator)
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(lm_loss_func, batch["loss_mask"])


def reduce_reports(reports: list[dict]) -> dict[str, float]:
    """Token-weighted means of the per-micro-batch reports, over data-parallel ranks."""
    from megatron.core import parallel_state

    if not reports:
        return {}
    out = {}
    for key in reports[0]:
        total = torch.stack([r[key] for r in reports]).sum(0)
        torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
        out[key] = (total[0] / total[1].clamp(min=1)).item()
    return out


def broadcast_from_last_stage(values: dict[str, float], keys: list[str]) -> dict[str, float]:
    """Every rank learns the losses that only the last pipeline stage computed."""
    from megatron.core import parallel_state

    t = torch.tensor([values.get(k, 0.0) for k in keys], dtype=torch.float64)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        last = parallel_state.get_pipeline_model_parallel_last_rank()
        torch.distributed.broadcast(t, src=last, group=parallel_state.get_pipeline_model_parallel_group())
    return dict(zip(keys, t.tolist()))


def train_step(cfg: RunConfig, state: TrainState, data_iterator) -> dict[str, float]:
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in state.model:
        chunk.zero_grad_buffer()
    state.optimizer.zero_grad()
    dp = parallel_state.get_data_parallel_world_size()
    num_micro = cfg.train.global_batch_size // (cfg.train.micro_batch_size * dp)
    reports = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data_iterator,
        model=state.model,
        num_microbatches=num_micro,
        seq_length=cfg.train.seq_length,
        micro_batch_size=cfg.train.micro_batch_size,
        forward_only=False,
    )
    lr = state.optimizer.param_groups[0]["lr"]  # the rate this step's update uses
    update_ok, grad_norm, _ = state.optimizer.step()
    if update_ok:
        state.scheduler.step(increment=1)
    state.step += 1
    state.consumed_samples += cfg.train.global_batch_size
    metrics = reduce_reports(reports) if parallel_state.is_pipeline_last_stage() else {}
    metrics = broadcast_from_last_stage(metrics, ["lm loss"])
    metrics["grad norm"] = float(grad_norm) if grad_norm is not None else math.nan
    metrics["lr"] = lr
    metrics["skipped"] = 0.0 if update_ok else 1.0
    return metrics


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_training(cfg: RunConfig) -> dict[str, float]:
    """Train for cfg.train.steps; returns the last step's metrics (same on every rank)."""
    from megatron.core import parallel_state

    rank = torch.distributed.get_rank()
    run_dir = Path(cfg.run.dir)
    if rank == 0:
        dump_config(cfg, run_dir / "config.yaml")
    state = build_train_state(cfg)
    tokens_per_step = cfg.train.global_batch_size * cfg.train.seq_length
    train_ds, _ = build_train_valid_datasets(
        cfg, cfg.train.steps * cfg.train.global_batch_size, cfg.train.global_batch_size)
    data_iterator = MicroBatchIterator(
        train_ds, cfg.train.micro_batch_size,
        parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size(),
        consumed_samples=state.consumed_samples)
    for chunk in state.model:
        chunk.train()
    t_start = time.perf_counter()
    metrics: dict[str, float] = {}
    while state.step < cfg.train.steps:
        t0 = time.perf_counter()
        metrics = train_step(cfg, state, data_iterator)
        dt = time.perf_counter() - t0
        if rank == 0 and (state.step % cfg.logging.log_interval == 0 or state.step == cfg.train.steps):
            elapsed = time.perf_counter() - t_start
            eta = elapsed / state.step * (cfg.train.steps - state.step)
            log.info(
                "step %d/%d | tokens %d | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | ETA %s",
                state.step, cfg.train.steps, state.step * tokens_per_step, metrics["lm loss"],
                metrics["lr"], metrics["grad norm"], tokens_per_step / dt, _fmt_eta(eta))
    metrics["step"] = state.step
    return metrics
