"""What megatron-core's schedules call for each micro-batch, and the step-level reductions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch

from megatron_kd.checkpoint.model_io import unwrap
from megatron_kd.config.schema import KDConfig, RunConfig
from megatron_kd.distill.model import DistillationModel, sequence_major_logits, widened_p2p
from megatron_kd.distill.objective import (
    AUTO_REPORTS,
    CachedRows,
    FusedOutput,
    KDObjective,
    OnlineLogits,
    UnigramTeacher,
    make_loss_func,
)
from megatron_kd.distill.schedules import scheduled_value
from megatron_kd.runtime.throughput import Profiler

# What the KD loss reports per step (token-weighted means); α and T are logged by the loop.
# kd.auto's (its mean weight, share of tokens weighted, teacher advantage) only under kd.auto.
KD_REPORTS = ["kd loss", "teacher lm loss", "teacher entropy", "top1 agreement", *AUTO_REPORTS]


@dataclass(frozen=True)
class KDSettings:
    """One step's α and T, the only KD values that change during a run: each step is given its
    own (the trainer's schedule), nothing stores them between steps."""

    alpha: float
    temperature: float

    @classmethod
    def scheduled(cls, kd: KDConfig, progress: float) -> KDSettings:
        """kd.alpha_schedule and kd.temperature_schedule at the run's progress in [0, 1]."""
        return cls(scheduled_value(kd.alpha, kd.alpha_schedule, progress),
                   scheduled_value(kd.temperature, kd.temperature_schedule, progress))


@dataclass
class StepContext:
    """What the forward step needs beyond the batch and the step's KDSettings, fixed for the
    run: its KD objective (bound once) and where the teacher's outputs come from."""

    kd: KDObjective | None = None
    tp_group: object = None
    sequence_parallel: bool = False
    cache: object = None  # a distill.cache.TeacherCache: the teacher's outputs come from it
    unigram: torch.Tensor | None = None  # teacher.unigram: log p [vocab], the same target at every token
    report_keys: list = field(default_factory=lambda: ["loss", "lm loss"])
    profiler: Profiler | None = None  # times the KD loss (mkd train --profile-steps)

    def __post_init__(self):
        # The keys follow the objective: kd.auto's are reported by its steps only, so a fixed-α
        # run's reductions and records never carry them (as NaN).
        if self.kd is None or self.kd.auto_tau is None:
            self.report_keys = [k for k in self.report_keys if k not in AUTO_REPORTS]


def lm_loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Sum of per-token CE over unmasked tokens, the token count, and report entries."""
    losses = output_tensor.float()
    mask = loss_mask.float()
    loss_sum = torch.sum(losses.view(-1) * mask.view(-1))
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), num_tokens.detach().float()])
    return loss_sum, num_tokens, {"lm loss": report, "loss": report}


def _batch_to_device(batch: dict) -> dict:
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    # sample_index stays on the host: the teacher cache's rows are read there
    return {k: v if k == "sample_index" else v.to(device, non_blocking=True) for k, v in batch.items()}


def _timed(loss_func, profiler: Profiler):
    """The KD loss under the profiler (`mkd train --profile-steps`); its gradient is computed in
    the forward, so this is the loss's whole cost."""
    def timed(output):
        with profiler.section("kd loss"):
            return loss_func(output)

    return timed


def make_forward_step(ctx: StepContext, settings: KDSettings | None = None):
    """megatron-core's forward_step_func for one step; `settings`: its α and T (a KD run's)."""
    if ctx.kd is not None and settings is None:
        raise ValueError("a KD step needs its KDSettings (α and T)")
    inner = _make_forward_step(ctx, settings)

    def forward_step(data_iterator, model):
        output, loss_func = inner(data_iterator, model)
        if ctx.profiler is not None and ctx.kd is not None and loss_func is not None:
            loss_func = _timed(loss_func, ctx.profiler)
        return output, loss_func

    return forward_step


def _make_forward_step(ctx: StepContext, settings: KDSettings | None):
    def forward_step(data_iterator, model):
        batch = _batch_to_device(next(data_iterator))
        if ctx.kd is None:
            output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
            return output, partial(lm_loss_func, batch["loss_mask"])
        if ctx.cache is not None:  # the teacher's outputs for this micro-batch's samples, from the cache
            return _forward_without_teacher_model(ctx, settings, batch, model, lambda: CachedRows(
                ctx.cache.rows(batch["sample_index"].cpu()), getattr(ctx.cache, "sampled", False)))
        if ctx.unigram is not None:
            return _forward_without_teacher_model(ctx, settings, batch, model, lambda: UnigramTeacher(ctx.unigram))
        out = model(batch["tokens"], batch["position_ids"], None)
        if not isinstance(out, tuple):  # not the last pipeline stage: hidden states go on
            return out, None
        student_logits, teacher_logits = out
        if ctx.kd.fused_output_layer:  # (hidden states, output weight) of each model
            (h_s, w_s), (h_t, w_t) = student_logits, teacher_logits
            return h_s, make_loss_func(
                ctx.kd, settings.alpha, settings.temperature, batch["labels"], batch["loss_mask"],
                FusedOutput(w_s, h_t, w_t, ctx.sequence_parallel), ctx.tp_group)
        # the logits are sequence-major [s, b, V/TP]: labels and mask [b, s] are transposed
        return student_logits, make_loss_func(
            ctx.kd, settings.alpha, settings.temperature, batch["labels"].t().contiguous(),
            batch["loss_mask"].t().contiguous(), OnlineLogits(teacher_logits), ctx.tp_group)

    return forward_step


def _forward_without_teacher_model(ctx: StepContext, settings: KDSettings, batch: dict, model, teacher_signal):
    """KD step whose teacher is not a model (a cache's rows, the unigram distribution): the
    student's logits, and the loss from `teacher_signal()` (read on the last pipeline stage only);
    which objective serves it is make_loss_func's choice."""
    student_logits = model(batch["tokens"], batch["position_ids"], None, output_processor=sequence_major_logits)
    if not unwrap(model).post_process:  # not the last (virtual) pipeline stage: hidden states go on
        return student_logits, None
    return student_logits, make_loss_func(
        ctx.kd, settings.alpha, settings.temperature, batch["labels"].t().contiguous(),
        batch["loss_mask"].t().contiguous(), teacher_signal(), ctx.tp_group)


def reduce_reports(reports: list[dict]) -> dict[str, float]:
    """Token-weighted means of the per-micro-batch reports, over data-parallel ranks."""
    from megatron.core import parallel_state

    if not reports:
        return {}
    out = {}
    for key in sorted(reports[0]):
        total = torch.stack([r[key] for r in reports]).sum(0)
        torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
        out[key] = (total[0] / total[1].clamp(min=1)).item()
    return out


def broadcast_from_last_stage(values: dict[str, float], keys: list[str]) -> dict[str, float]:
    """Every rank learns the values that only the last pipeline stage computed."""
    from megatron.core import parallel_state

    t = torch.tensor([values.get(k, math.nan) for k in keys], dtype=torch.float64)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        last = parallel_state.get_pipeline_model_parallel_last_rank()
        torch.distributed.broadcast(t, src=last, group=parallel_state.get_pipeline_model_parallel_group())
    return dict(zip(keys, t.tolist()))


def schedule_kwargs(cfg: RunConfig, model_chunks: list) -> dict:
    """Extra arguments of megatron-core's pipeline schedule: for KD with the teacher's model
    under PP, a p2p communicator whose messages carry the teacher's hidden states too."""
    inner = model_chunks[0].module
    if cfg.parallel.pp == 1 or not isinstance(inner, DistillationModel):
        return {}
    p2p, groups = widened_p2p(inner.config, inner.teacher.config.hidden_size)
    return {"p2p_communicator": p2p, "pg_collection": groups}
