"""The pretraining loop: megatron-core's pipeline schedules, DDP, optimizer and checkpoints.

`run_training` is what `mkd train` runs on every rank after the process groups are up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import torch

from megatron_kd.checkpoint.manager import (
    checkpoint_root,
    load_checkpoint,
    remove_partial_saves,
    save_checkpoint,
)
from megatron_kd.checkpoint.refs import latest_checkpoint, verify_checkpoint
from megatron_kd.config import dump_config
from megatron_kd.config.loader import config_to_dict
from megatron_kd.config.schema import RunConfig
from megatron_kd.config.validate import tokens_per_step, train_steps
from megatron_kd.data.batches import schedule_iterators
from megatron_kd.data.datasets import build_datasets, load_tokenizer
from megatron_kd.distill.cache import TeacherCache
from megatron_kd.distill.objective import KDObjective
from megatron_kd.distill.schedules import scheduled_value
from megatron_kd.distill.teacher import align_padded_vocab, resolve_teacher, teacher_identity
from megatron_kd.errors import MKDError
from megatron_kd.files import write_text_atomic
from megatron_kd.models.params import train_flops_per_token
from megatron_kd.runtime import preemption
from megatron_kd.runtime.throughput import PROFILER, device_name, peak_tflops, step_throughput
from megatron_kd.training.evaluate import evaluate
from megatron_kd.training.metrics import MetricsWriter
from megatron_kd.training.run_dir import check_run_dir
from megatron_kd.training.setup import TrainState, build_train_state
from megatron_kd.training.steps import (
    KD_REPORTS,
    StepContext,
    broadcast_from_last_stage,
    make_forward_step,
    reduce_reports,
)

log = logging.getLogger("megatron_kd.train")


def train_step(cfg: RunConfig, state: TrainState, data_iterator,
               ctx: StepContext | None = None) -> dict[str, float]:
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    ctx = ctx or StepContext()
    for chunk in state.model:
        chunk.zero_grad_buffer()
    state.optimizer.zero_grad()
    dp = parallel_state.get_data_parallel_world_size()
    num_micro = cfg.train.global_batch_size // (cfg.train.micro_batch_size * dp)
    reports = get_forward_backward_func()(
        forward_step_func=make_forward_step(ctx),
        data_iterator=data_iterator,
        model=state.model,
        num_microbatches=num_micro,
        seq_length=cfg.train.seq_length,
        micro_batch_size=cfg.train.micro_batch_size,
        forward_only=False,
        **state.schedule_kwargs,
    )
    lr = state.optimizer.param_groups[0]["lr"]  # the rate this step's update uses
    metrics = reduce_reports(reports) if parallel_state.is_pipeline_last_stage() else {}
    metrics = broadcast_from_last_stage(metrics, ctx.report_keys)
    if state.step + 1 in _injected_nan_steps():
        for chunk in state.model:  # fault injection for the non-finite guard's tests
            for p in chunk.parameters():
                if getattr(p, "main_grad", None) is not None:
                    p.main_grad.fill_(math.nan)
    # megatron-core's optimizer step, split so a non-finite loss or gradient norm skips the
    # update (parameters, Adam state and LR schedule untouched) instead of poisoning the model.
    found_inf = state.optimizer.prepare_grads()
    if cfg.train.clip_grad > 0:
        grad_norm = state.optimizer.clip_grad_norm(cfg.train.clip_grad)
    else:
        grad_norm = state.optimizer.get_grad_norm()
    finite = (not found_inf and grad_norm is not None and math.isfinite(float(grad_norm))
              and math.isfinite(metrics["loss"]))
    update_ok = bool(finite and state.optimizer.step_with_ready_grads())
    if update_ok:
        state.scheduler.step(increment=1)
    state.step += 1
    state.consumed_samples += cfg.train.global_batch_size
    metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else math.nan
    metrics["lr"] = lr
    metrics["skipped"] = 0.0 if update_ok else 1.0
    return metrics


def _injected_nan_steps() -> set[int]:
    """MKD_INJECT_NAN_STEPS=3,4 makes those steps' gradients NaN (tests of the guard)."""
    raw = os.environ.get("MKD_INJECT_NAN_STEPS", "")
    return {int(x) for x in raw.split(",") if x.strip()}


def prepare_kd(cfg: RunConfig, check_teacher: bool = True):
    """(teacher spec for build_train_state, StepContext) — (None, plain context) without KD.
    May set cfg.model.padded_vocab_size to the teacher's (call before building the student).
    `check_teacher=False` when this launch already checked the teacher (mkd train does, once)."""
    from megatron.core import parallel_state

    if not cfg.teacher.checkpoint and not cfg.teacher.cache:
        return None, StepContext()
    keys = ["loss", "lm loss"] + [k for k in KD_REPORTS if cfg.kd.teacher_metrics or
                                  not k.startswith(("teacher", "top1"))]
    if cfg.teacher.cache:  # the teacher's outputs from the cache: no teacher model at all
        cache = TeacherCache(cfg.teacher.cache)
        # the student's logits are sharded as the online run's (which takes the teacher's padding)
        padded = cache.manifest["teacher_padded_vocab"]
        align_padded_vocab(cfg, dataclasses.replace(cfg.model, padded_vocab_size=padded))
        teacher, source = None, f"the teacher cache {cfg.teacher.cache} (top-k {cache.top_k})"
    else:
        cache = None
        ckpt, teacher_model, _ = resolve_teacher(cfg, check=check_teacher)
        align_padded_vocab(cfg, teacher_model)
        teacher, source = (ckpt, teacher_model), f"{ckpt} ({teacher_model.name})"
    ctx = StepContext(kd=KDObjective.from_config(cfg.kd, cfg.model.vocab_size), report_keys=keys,
                      tp_group=parallel_state.get_tensor_model_parallel_group(),
                      alpha=cfg.kd.alpha, temperature=cfg.kd.temperature,
                      sequence_parallel=cfg.parallel.sequence_parallel, cache=cache)
    log.info("distilling from %s: alpha %.3g, %s, T=%.3g, mix %s", source, cfg.kd.alpha, cfg.kd.kind,
             cfg.kd.temperature, cfg.kd.mix)
    return teacher, ctx


def _report_profile(run_dir: Path, sections: dict, steps: list[float], last: int, rank: int) -> None:
    total = sum(steps)
    shares = {k: v / total for k, v in sections.items()}
    log.info("profile over %d steps (to step %d): %.1f ms a step; %s", len(steps), last, 1e3 * total / len(steps),
             "; ".join(f"{k} {1e3 * v / len(steps):.1f} ms ({100 * shares[k]:.1f}%)" for k, v in sections.items())
             or "no teacher forward or KD loss in these steps")
    if rank == 0:
        write_text_atomic(run_dir / "profile.json", json.dumps(
            {"steps": len(steps), "last_step": last, "step_s": total / len(steps),
             "sections_s": {k: v / len(steps) for k, v in sections.items()}, "shares": shares}, indent=2))


def _budgets_due(cfg: RunConfig, step: int) -> list[int]:
    """Token budgets crossed by this step (saved at the first step reaching each)."""
    per_step = tokens_per_step(cfg)
    before, now = (step - 1) * per_step, step * per_step
    return [b for b in sorted(set(cfg.checkpoint.save_at_tokens)) if before < b <= now]


def run_training(cfg: RunConfig, overwrite: bool = False, teacher_checked: bool = False,
                 profile_steps: int = 0) -> dict[str, float]:
    """Train (or resume) to the configured length; returns the last metrics (same on all ranks).
    With `teacher.checkpoint` set, the student learns from the frozen teacher (kd section);
    `teacher_checked`: the launch already verified it (resolve_teacher's checks run once).
    `profile_steps`: time the teacher forward and the KD loss over that many steps (after the
    first) and log their shares of the step (RUN_DIR/profile.json)."""
    from megatron.core import parallel_state

    rank = torch.distributed.get_rank()
    run_dir = Path(cfg.run.dir)
    # Every rank checks (so all fail together); only rank 0 deletes on --overwrite.
    check_run_dir(cfg, overwrite, delete=rank == 0)
    if rank == 0:
        remove_partial_saves(checkpoint_root(cfg))  # left by a process killed mid-save
    torch.distributed.barrier()
    resume_from = latest_checkpoint(checkpoint_root(cfg)) if cfg.checkpoint.resume else None
    for source in (resume_from, cfg.checkpoint.load):
        if source is not None:  # build with the padded vocabulary the weights were saved with
            saved = verify_checkpoint(Path(source)).get("padded_vocab_size")
            cfg.model.padded_vocab_size = saved or cfg.model.padded_vocab_size
            break
    teacher, ctx = prepare_kd(cfg, check_teacher=not teacher_checked)
    if rank == 0:
        dump_config(cfg, run_dir / "config.yaml")
    tokenizer = load_tokenizer(cfg)
    state = build_train_state(cfg, teacher=teacher)
    state.tokenizer_info = tokenizer.describe()
    state.teacher_identity = teacher_identity(cfg)
    tokenizer_file = cfg.data.tokenizer
    total = train_steps(cfg)
    per_step = tokens_per_step(cfg)

    if resume_from is not None:
        info = load_checkpoint(resume_from, state)
        log.info("resumed from %s at step %d (%d tokens)", resume_from, info.step, info.tokens)
    elif cfg.checkpoint.load:
        info = load_checkpoint(Path(cfg.checkpoint.load), state, load_optimizer=False)
        log.info("initial weights from %s (step %d)", cfg.checkpoint.load, info.step)

    # From a cache: the stream is built exactly as the cache job built it (same sample count)
    n_samples = ctx.cache.manifest["num_samples"] if ctx.cache is not None else total * cfg.train.global_batch_size
    train_ds, valid_sets = build_datasets(cfg, tokenizer, n_samples)
    data_iterator = schedule_iterators(
        train_ds, cfg.train.micro_batch_size, parallel_state.get_data_parallel_rank(),
        parallel_state.get_data_parallel_world_size(), len(state.model), consumed_samples=state.consumed_samples)
    preemption.check_start_up()  # a SIGTERM swallowed during start-up: stop before writing metrics
    writer = MetricsWriter(run_dir, cfg.logging.tensorboard, enabled=rank == 0, wandb=cfg.logging.wandb,
                           run_name=cfg.run.name, run_config=config_to_dict(cfg))

    for chunk in state.model:
        chunk.train()
    metrics: dict[str, float] = {}
    start_step, t_start = state.step, time.perf_counter()
    skipped = 0
    stop = min(total, cfg.train.stop_at_step or total)
    world = torch.distributed.get_world_size()
    flops_per_token = train_flops_per_token(cfg.model, cfg.train.seq_length)
    if teacher is not None:  # the teacher's forward (none from a cache: it ran once, elsewhere)
        flops_per_token += train_flops_per_token(teacher[1], cfg.train.seq_length) / 3
    peak = peak_tflops(device_name(), cfg.precision.dtype, cfg.precision.fp8 is not None)
    profiled: list[float] = []
    preemption.training_started()
    try:
        while state.step < stop:
            if profile_steps and state.step == start_step + 1:
                PROFILER.start()
            t0 = time.perf_counter()
            if ctx.kd is not None:
                progress = state.step / max(1, total)
                ctx.alpha = scheduled_value(cfg.kd.alpha, cfg.kd.alpha_schedule, progress)
                ctx.temperature = scheduled_value(cfg.kd.temperature, cfg.kd.temperature_schedule, progress)
            metrics = train_step(cfg, state, data_iterator, ctx)
            if ctx.kd is not None:  # the loop owns the schedule, so it logs α and T itself
                metrics["alpha"], metrics["temperature"] = ctx.alpha, ctx.temperature
            if PROFILER.active and torch.cuda.is_available():
                torch.cuda.synchronize()  # the step's time, for the shares
            dt = time.perf_counter() - t0
            step = state.step
            if PROFILER.active:
                profiled.append(dt)
                if len(profiled) == profile_steps or step == stop:
                    _report_profile(run_dir, PROFILER.stop(), profiled, step, rank)
            skipped = skipped + 1 if metrics["skipped"] else 0
            if skipped:
                log.warning("step %d skipped: non-finite loss %.4g or grad norm %.4g (%d in a row, "
                            "budget %d)", step, metrics["loss"], metrics["grad_norm"], skipped,
                            cfg.train.max_consecutive_skips)
            if skipped > cfg.train.max_consecutive_skips:
                latest = latest_checkpoint(checkpoint_root(cfg))
                raise MKDError(
                    f"{skipped} consecutive steps had a non-finite loss or gradient (step {step}); "
                    f"stopping. The last good checkpoint is {latest or '(none yet)'}; lower train.lr "
                    "or check the data, then start again (it resumes from there)")
            record = {"step": step, "tokens": step * per_step, "loss": metrics["loss"],
                      "lm_loss": metrics["lm loss"], "lr": metrics["lr"],
                      "grad_norm": metrics["grad_norm"], "tokens_per_s": per_step / dt,
                      "skipped": int(metrics["skipped"])}
            speed = step_throughput(per_step, dt, world, flops_per_token, peak)
            record.update({k: v for k, v in speed.items() if v is not None})
            record.update({k.replace(" ", "_"): metrics[k] for k in ["alpha", "temperature", *KD_REPORTS]
                           if k in metrics})
            last = step == total
            if (cfg.logging.eval_interval and step % cfg.logging.eval_interval == 0) or last:
                for name, value in evaluate(cfg, state.model, valid_sets).items():
                    record[f"val/{name}"] = value
                    metrics[f"val/{name}"] = value
            if step % cfg.logging.log_interval == 0 or last or any(k.startswith("val/") for k in record):
                elapsed = time.perf_counter() - t_start
                eta = elapsed / (step - start_step) * (total - step)
                extra = f" | {speed['tflops_per_gpu']:.3g} TFLOP/s/GPU" + (
                    f" (MFU {100 * speed['mfu']:.1f}%)" if speed["mfu"] is not None else "")
                writer.console(step, total, step * per_step, metrics, per_step / dt, eta, extra)
                vals = {k: v for k, v in record.items() if k.startswith("val/")}
                if vals:
                    log.info("validation at step %d: %s", step,
                             " | ".join(f"{k[4:]} {v:.4f}" for k, v in vals.items()))
                writer.write(record)
            if preemption.requested():
                log.warning("preemption signal %s at step %d: checkpointing, then exiting for requeue",
                            preemption.signal_names(), step)
                if not last:
                    save_checkpoint(cfg, state, f"step_{step:07d}", "periodic", tokenizer_file)
                    metrics["preempted"] = 1.0
                    break
            for budget in _budgets_due(cfg, step):
                save_checkpoint(cfg, state, f"tokens_{budget}", "budget", tokenizer_file)
            if cfg.checkpoint.save_interval and step % cfg.checkpoint.save_interval == 0 and not last:
                save_checkpoint(cfg, state, f"step_{step:07d}", "periodic", tokenizer_file)
        if metrics.get("preempted"):
            pass  # the checkpoint was just written
        elif state.step > start_step and state.step < total:
            # Stopped early (stop_at_step): always leave a checkpoint to resume from.
            save_checkpoint(cfg, state, f"step_{state.step:07d}", "periodic", tokenizer_file)
        elif cfg.checkpoint.save_at_end and state.step > start_step:
            save_checkpoint(cfg, state, f"step_{state.step:07d}", "final", tokenizer_file)
    finally:
        writer.close()
    if not metrics:  # resumed a finished run: report its validation losses
        metrics = {f"val/{k}": v for k, v in evaluate(cfg, state.model, valid_sets).items()}
        metrics["loss"] = metrics["lm loss"] = math.nan
    metrics["step"] = state.step
    return metrics
