"""A training run on every rank: resolve the config once, build the model, data and callbacks,
and hand them to the Trainer (training/trainer.py). `RunStep` is one optimizer step with
megatron-core's pipeline schedules, DDP and optimizer, in the trainer's two halves
(`train_step`: both at once, outside a trainer).

`run_training` is what `mkd train` runs on every rank after the process groups are up.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from megatron_kd.checkpoint.checkpointer import Checkpointer
from megatron_kd.config import dump_config
from megatron_kd.config.loader import config_to_dict
from megatron_kd.config.schema import RunConfig
from megatron_kd.config.validate import tokens_per_step, train_steps
from megatron_kd.data.batches import schedule_iterators
from megatron_kd.data.datasets import build_datasets, load_tokenizer
from megatron_kd.distill.model import build_teacher
from megatron_kd.distill.objective import KDObjective
from megatron_kd.distill.teacher import teacher_identity
from megatron_kd.models.flops import training_flops_per_token
from megatron_kd.runtime import preemption
from megatron_kd.runtime.throughput import Profiler, device_name, peak_tflops
from megatron_kd.training import callbacks
from megatron_kd.training.evaluate import evaluate
from megatron_kd.training.faults import Faults
from megatron_kd.training.grad_clip import grad_norm_and_clip
from megatron_kd.training.metrics import MetricsWriter
from megatron_kd.training.moe_metrics import moe_step_metrics
from megatron_kd.training.resolve import CheckedLaunch, ResolvedRun, resolve_run
from megatron_kd.training.run_dir import check_run_dir
from megatron_kd.training.setup import TrainState, build_train_state
from megatron_kd.training.steps import (
    KD_REPORTS,
    KDSettings,
    StepContext,
    broadcast_from_last_stage,
    make_forward_step,
    reduce_reports,
)
from megatron_kd.training.trainer import Trainer, TrainResult

log = logging.getLogger("megatron_kd.train")


class RunStep:
    """A run's optimizer step in the trainer's two halves (training/trainer.TrainStep), on every
    rank (the metrics are the same on all): megatron-core's forward-backward schedule over the
    global batch with the step's KDSettings, then megatron-core's optimizer step."""

    def __init__(self, cfg: RunConfig, state: TrainState, data_iterator, ctx: StepContext | None = None):
        self.cfg, self.state, self.data_iterator = cfg, state, data_iterator
        self.ctx = ctx or StepContext()

    def forward_backward(self, settings: KDSettings | None) -> dict[str, float]:
        from megatron.core import parallel_state
        from megatron.core.pipeline_parallel import get_forward_backward_func

        cfg, state = self.cfg, self.state
        for chunk in state.model:
            chunk.zero_grad_buffer()
        state.optimizer.zero_grad()
        dp = parallel_state.get_data_parallel_world_size()
        num_micro = cfg.train.global_batch_size // (cfg.train.micro_batch_size * dp)
        reports = get_forward_backward_func()(
            forward_step_func=make_forward_step(self.ctx, settings),
            data_iterator=self.data_iterator,
            model=state.model,
            num_microbatches=num_micro,
            seq_length=cfg.train.seq_length,
            micro_batch_size=cfg.train.micro_batch_size,
            forward_only=False,
            **state.schedule_kwargs,
        )
        metrics = reduce_reports(reports) if parallel_state.is_pipeline_last_stage() else {}
        metrics = broadcast_from_last_stage(metrics, self.ctx.report_keys)
        metrics.update(moe_step_metrics(cfg, num_micro, state.step + 1))
        return metrics

    def optim_step(self, metrics: dict[str, float]) -> dict[str, float]:
        state = self.state
        lr = state.optimizer.param_groups[0]["lr"]  # the rate this step's update uses
        # megatron-core's optimizer step, split so a non-finite loss or gradient norm skips the
        # update (parameters, Adam state and LR schedule untouched) instead of poisoning the model.
        found_inf = state.optimizer.prepare_grads()
        grad_norm = grad_norm_and_clip(state.optimizer, self.cfg.train.clip_grad)
        finite = (not found_inf and grad_norm is not None and math.isfinite(float(grad_norm))
                  and math.isfinite(metrics["loss"]))
        update_ok = bool(finite and state.optimizer.step_with_ready_grads())
        if update_ok:
            state.scheduler.step(increment=1)
        state.step += 1
        state.consumed_samples += self.cfg.train.global_batch_size
        profiler = self.ctx.profiler
        if profiler is not None and profiler.active and torch.cuda.is_available():
            torch.cuda.synchronize()  # the step's whole time, for the profile's shares
        return {"grad_norm": float(grad_norm) if grad_norm is not None else math.nan, "lr": lr,
                "skipped": 0.0 if update_ok else 1.0}


def train_step(cfg: RunConfig, state: TrainState, data_iterator, ctx: StepContext | None = None,
               settings: KDSettings | None = None) -> dict[str, float]:
    """One whole optimizer step outside a trainer (benchmarks, tests). A KD step without
    `settings` takes the recipe's kd.alpha and kd.temperature (no schedule)."""
    step = RunStep(cfg, state, data_iterator, ctx)
    if settings is None and step.ctx.kd is not None:
        settings = KDSettings(cfg.kd.alpha, cfg.kd.temperature)
    metrics = step.forward_backward(settings)
    metrics.update(step.optim_step(metrics))
    return metrics


def kd_step_context(run: ResolvedRun, profiler: Profiler | None = None) -> StepContext:
    """The forward step's KD inputs for a resolved run (a plain context without a teacher)."""
    from megatron.core import parallel_state

    cfg = run.cfg
    if run.teacher is None:
        return StepContext(profiler=profiler)
    keys = ["loss", "lm loss"] + [k for k in KD_REPORTS if cfg.kd.teacher_metrics or
                                  not k.startswith(("teacher", "top1"))]
    log.info("distilling from %s: alpha %.3g%s, %s, T=%.3g, mix %s", run.teacher.describe(), cfg.kd.alpha,
             " (the ceiling of kd.auto)" if cfg.kd.auto.enabled else "", cfg.kd.kind, cfg.kd.temperature, cfg.kd.mix)
    # kd.auto's trend sums every data-parallel (and context-parallel) rank's micro-batches: one α on all
    objective = KDObjective.from_config(cfg.kd, cfg.model.vocab_size,
                                        data_parallel_group=parallel_state.get_data_parallel_group(
                                            with_context_parallel=True))
    return StepContext(kd=objective, report_keys=keys,
                       tp_group=parallel_state.get_tensor_model_parallel_group(),
                       sequence_parallel=cfg.parallel.sequence_parallel, cache=run.teacher.cache,
                       unigram=run.teacher.unigram, profiler=profiler)


def teacher_chunks(run: ResolvedRun) -> list | None:
    """The frozen teacher's model chunks (this rank's share, one per virtual stage) for an
    online KD run; None without one (no KD, or a teacher cache)."""
    t = run.teacher
    if t is None or t.checkpoint is None:
        return None
    return build_teacher(run.cfg, t.model, t.checkpoint)


def run_training(cfg: RunConfig, checkpointer: Checkpointer, checked: CheckedLaunch | None = None,
                 overwrite: bool = False, profile_steps: int = 0, faults: Faults | None = None) -> TrainResult:
    """Train (or resume) to the configured length; the result is the same on all ranks.
    `checkpointer`: the launch's (built once for `cfg`; it finds the resume point, loads it and
    saves). `checked`: what the launch's checks found (training/preflight.py); None: nothing
    was checked, the teacher is checked here. With `teacher.checkpoint` or `teacher.cache` set,
    the student learns from the frozen teacher (kd section). `profile_steps`: time the teacher
    forward and the KD loss over that many steps (after the first) and log their shares of the
    step (RUN_DIR/profile.json). `faults`: injected faults (tests; default none)."""
    from megatron.core import parallel_state

    faults = faults or Faults()
    run = _resolve(cfg, checkpointer, checked, overwrite)
    cfg = run.cfg  # from here on the resolved config, never changed
    profiler = Profiler() if profile_steps else None
    ctx = kd_step_context(run, profiler)
    if torch.distributed.get_rank() == 0:
        dump_config(cfg, Path(cfg.run.dir) / "config.yaml")
    tokenizer = load_tokenizer(cfg)
    state = build_train_state(cfg, teacher=teacher_chunks(run), profiler=profiler)
    state.tokenizer_info = tokenizer.describe()
    # what its checkpoints record as the teacher: read once per launch (by its checks, else here)
    state.teacher_identity = run.teacher_identity if run.teacher_identity is not None else teacher_identity(cfg)
    state.kd_objective = ctx.kd  # the objective the steps use: its state is saved and resumed
    total = train_steps(cfg)
    start = checkpointer.load(state, run.resume_from)
    if start is not None and start.resumed:  # the step and data position it was saved at
        state.step, state.consumed_samples = start.step, start.consumed_samples

    # From a cache: the stream is built exactly as the cache job built it (same sample count)
    n_samples = ctx.cache.manifest["num_samples"] if ctx.cache is not None else total * cfg.train.global_batch_size
    train_ds, valid_sets = build_datasets(cfg, tokenizer, n_samples)
    data_iterator = schedule_iterators(
        train_ds, cfg.train.micro_batch_size, parallel_state.get_data_parallel_rank(),
        parallel_state.get_data_parallel_world_size(), len(state.model), consumed_samples=state.consumed_samples)
    preemption.check_start_up()  # a SIGTERM swallowed during start-up: stop before writing metrics
    schedule = (lambda progress: KDSettings.scheduled(cfg.kd, progress)) if ctx.kd is not None else None
    trainer = Trainer(state, RunStep(cfg, state, data_iterator, ctx), total=total, stop=cfg.train.stop_at_step,
                      tokens_per_step=tokens_per_step(cfg), schedule=schedule,
                      callbacks=_callbacks(cfg, run, state, ctx, checkpointer, profiler, profile_steps, valid_sets)
                      + faults.callbacks())
    for chunk in state.model:
        chunk.train()
    preemption.training_started()
    result = trainer.fit()
    if result.steps_run == 0:  # nothing to train: report the checkpoint's validation losses
        vals = {f"val/{k}": v for k, v in evaluate(cfg, state.model, valid_sets).items()}
        result = TrainResult(result.status, result.step, result.total, 0, vals)
    return result


def _resolve(cfg: RunConfig, checkpointer: Checkpointer, checked: CheckedLaunch | None,
             overwrite: bool) -> ResolvedRun:
    """The run directory made ready (--overwrite's deletion, saves that never completed
    removed), then the run resolved from its resume point."""
    rank = torch.distributed.get_rank()
    # Every rank checks (so all fail together); only rank 0 deletes on --overwrite.
    check_run_dir(cfg, overwrite, delete=rank == 0)
    if rank == 0:
        checkpointer.clean_partial()  # left by a process killed mid-save
    torch.distributed.barrier()
    run = resolve_run(cfg, checkpointer, checked)
    checkpointer.use_resolved_config(run.cfg)  # its saves record the padded vocabulary the run has
    return run


def _callbacks(cfg: RunConfig, run: ResolvedRun, state, ctx: StepContext, checkpointer: Checkpointer,
               profiler: Profiler | None, profile_steps: int, valid_sets) -> list:
    rank = torch.distributed.get_rank()
    run_dir = Path(cfg.run.dir)
    out = []
    if ctx.kd is not None:
        out.append(callbacks.KDReports())
    if profiler is not None:
        out.append(callbacks.Profile(profiler, profile_steps, run_dir, write=rank == 0))
    out.append(callbacks.SkipBudget(cfg.train.max_consecutive_skips, checkpointer.latest))
    flops_per_token = training_flops_per_token(cfg.model, cfg.train.seq_length)
    if run.teacher is not None and run.teacher.model is not None:  # the online teacher's forward
        flops_per_token += training_flops_per_token(run.teacher.model, cfg.train.seq_length) / 3
    out.append(callbacks.Throughput(torch.distributed.get_world_size(), flops_per_token,
                                    peak_tflops(device_name(), cfg.precision.dtype, cfg.precision.fp8 is not None)))
    out.append(callbacks.Evaluation(cfg.logging.eval_interval, lambda: evaluate(cfg, state.model, valid_sets)))
    writer = MetricsWriter(run_dir, cfg.logging.tensorboard, enabled=rank == 0, wandb=cfg.logging.wandb,
                           run_name=cfg.run.name, run_config=config_to_dict(cfg))
    out.append(callbacks.Logging(writer, cfg.logging.log_interval))
    out.append(callbacks.Preemption(preemption.requested, preemption.signal_names))
    tokenizer_file = cfg.data.tokenizer
    out.append(callbacks.Checkpointing(checkpointer, lambda due: checkpointer.save(state, due, tokenizer_file)))
    return out
