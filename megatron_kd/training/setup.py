"""Model chunks, DDP, optimizer and LR schedule from a RunConfig (megatron-core throughout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_kd.checkpoint.model_io import load_model_weights
from megatron_kd.config.schema import RunConfig
from megatron_kd.config.validate import train_steps
from megatron_kd.distill.model import DistillationModel
from megatron_kd.models.gpt import build_gpt_chunks
from megatron_kd.training.steps import schedule_kwargs


@dataclass
class TrainState:
    model: list  # DDP-wrapped model chunks (one per virtual pipeline stage; one without)
    optimizer: Any
    scheduler: Any
    step: int = 0
    consumed_samples: int = 0
    tokenizer_info: dict | None = None  # recorded in checkpoints
    teacher_identity: dict | None = None  # recorded in checkpoints: a resume must name the same teacher
    # the run's KD objective (distill.objective.KDObjective; None without KD): its running state
    # (kd.auto's advantage trend) is saved with each checkpoint and restored on resume
    kd_objective: Any = None
    schedule_kwargs: dict = field(default_factory=dict)  # extra arguments of the pipeline schedule


def build_ddp_model(cfg: RunConfig, teacher: list | None = None, profiler=None) -> list:
    """DDP-wrapped model chunks (one per virtual pipeline stage). With `teacher` (this rank's
    frozen teacher chunks, one per student chunk: training/loop.teacher_chunks) each chunk is a
    DistillationModel whose teacher part (the same layers' share of the teacher) stays outside
    DDP's buffers and the optimizer."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    # the student starts from weights that depend on run.seed only, not on the layout
    chunks = build_gpt_chunks(cfg.model, cfg.parallel, cfg.precision, init_seed=cfg.run.seed,
                              recompute=(cfg.train.recompute, cfg.train.recompute_layers))
    if teacher is not None:
        chunks = [DistillationModel(s, t, fused_output_layer=cfg.kd.fused_output_layer, profiler=profiler)
                  for s, t in zip(chunks, teacher, strict=True)]
    par = cfg.parallel
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=par.grad_reduce_in_fp32,
        overlap_grad_reduce=par.overlap_grad_reduce,
        overlap_param_gather=par.overlap_param_gather,
        bucket_size=par.ddp_bucket_size,
        use_distributed_optimizer=par.distributed_optimizer,
    )
    # The loss is a sum over tokens; finalize_model_grads divides by the global token count,
    # so the objective is the mean over every non-masked token of the global batch.
    chunks[0].config.calculate_per_token_loss = True  # (one TransformerConfig, shared by the chunks)
    # Later chunks' gradients are reduced as one bucket (as Megatron-LM does): their backward
    # ends last, when there is nothing left to overlap with.
    return [DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk, disable_bucketing=i > 0)
            for i, chunk in enumerate(chunks)]


def build_optimizer(cfg: RunConfig, model_chunks: list):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    tr = cfg.train
    opt_config = OptimizerConfig(
        optimizer="adam",
        lr=tr.lr,
        min_lr=tr.lr * tr.min_lr_ratio,
        weight_decay=tr.weight_decay,
        adam_beta1=tr.adam_beta1,
        adam_beta2=tr.adam_beta2,
        adam_eps=tr.adam_eps,
        clip_grad=tr.clip_grad,
        bf16=cfg.precision.dtype == "bf16",
        fp16=cfg.precision.dtype == "fp16",
        params_dtype=model_chunks[0].module.config.params_dtype,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
    )
    return get_megatron_optimizer(opt_config, model_chunks)


_DECAY_STYLE = {"constant": "constant", "cosine": "cosine", "linear": "linear", "wsd": "WSD"}


def build_scheduler(cfg: RunConfig, optimizer):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    tr = cfg.train
    wsd = tr.lr_schedule == "wsd"
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if tr.warmup_steps else tr.lr,
        max_lr=tr.lr,
        min_lr=tr.lr * tr.min_lr_ratio,
        lr_warmup_steps=tr.warmup_steps,
        lr_decay_steps=train_steps(cfg),
        lr_decay_style=_DECAY_STYLE[tr.lr_schedule],
        start_wd=tr.weight_decay,
        end_wd=tr.weight_decay,
        wd_incr_steps=train_steps(cfg),
        wd_incr_style="constant",
        wsd_decay_steps=max(1, round(train_steps(cfg) * tr.wsd_decay_fraction)) if wsd else None,
        lr_wsd_decay_style="cosine" if wsd else None,
    )


def build_train_state(cfg: RunConfig, init_weights: str | Path | None = None,
                      teacher=None, profiler=None) -> TrainState:
    """Model, optimizer and schedule. `init_weights`: a dist checkpoint of weights (any layout)
    loaded before the optimizer takes its copies of the parameters. `teacher`: see
    build_ddp_model; `profiler`: times the teacher's forward (mkd train --profile-steps)."""
    from megatron.core.distributed import finalize_model_grads

    model = build_ddp_model(cfg, teacher, profiler)
    if init_weights is not None:
        load_model_weights(model, init_weights)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    config = model[0].config  # the schedule's (shared by the chunks)
    config.finalize_model_grads_func = finalize_model_grads
    one = len(model) == 1  # several chunks: one function per chunk, in chunk order
    config.no_sync_func = model[0].no_sync if one else [m.no_sync for m in model]
    if cfg.parallel.overlap_grad_reduce:  # the schedule starts each bucket's reduce as its grads are ready
        config.grad_sync_func = model[0].start_grad_sync if one else [m.start_grad_sync for m in model]
    if cfg.parallel.overlap_param_gather:  # parameters gathered chunk by chunk in the next forward
        config.param_sync_func = model[0].start_param_sync if one else [m.start_param_sync for m in model]
    return TrainState(model=model, optimizer=optimizer, scheduler=scheduler,
                      schedule_kwargs=schedule_kwargs(cfg, model))
