"""What megatron-core's schedules call for each micro-batch, and the step-level reductions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch

from megatron_kd.checkpoint.model_io import unwrap
from megatron_kd.config.schema import RunConfig
from megatron_kd.distill.cache import PADDING_LOGIT, dense_teacher_logits, teacher_rows
from megatron_kd.distill.model import DistillationModel, sequence_major_logits, widened_p2p
from megatron_kd.distill.objective import (
    CachedRows,
    FusedOutput,
    KDObjective,
    OnlineLogits,
    cache_is_sparse,
    make_loss_func,
)
from megatron_kd.runtime.throughput import Profiler

# What the KD loss reports per step (token-weighted means); α and T are logged by the loop.
KD_REPORTS = ["kd loss", "teacher lm loss", "teacher entropy", "top1 agreement"]


@dataclass
class StepContext:
    """Per-step inputs of the forward step beyond the batch: the run's KD objective (bound once)
    and this step's scheduled α and T, the only KD values that change."""

    kd: KDObjective | None = None
    alpha: float = 0.0
    temperature: float = 1.0
    tp_group: object = None
    sequence_parallel: bool = False
    cache: object = None  # a distill.cache.TeacherCache: the teacher's outputs come from it
    unigram: torch.Tensor | None = None  # teacher.unigram: log p [vocab], the same target at every token
    unigram_row: tuple | None = None  # its top-k row, made at the first step that needs it
    report_keys: list = field(default_factory=lambda: ["loss", "lm loss"])
    profiler: Profiler | None = None  # times the KD loss (mkd train --profile-steps)


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


def make_forward_step(ctx: StepContext):
    inner = _make_forward_step(ctx)

    def forward_step(data_iterator, model):
        output, loss_func = inner(data_iterator, model)
        if ctx.profiler is not None and ctx.kd is not None and loss_func is not None:
            loss_func = _timed(loss_func, ctx.profiler)
        return output, loss_func

    return forward_step


def _make_forward_step(ctx: StepContext):
    def forward_step(data_iterator, model):
        batch = _batch_to_device(next(data_iterator))
        if ctx.kd is None:
            output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
            return output, partial(lm_loss_func, batch["loss_mask"])
        if ctx.cache is not None:
            return _forward_from_cache(ctx, batch, model)
        if ctx.unigram is not None:
            return _forward_unigram(ctx, batch, model)
        out = model(batch["tokens"], batch["position_ids"], None)
        if not isinstance(out, tuple):  # not the last pipeline stage: hidden states go on
            return out, None
        student_logits, teacher_logits = out
        if ctx.kd.fused_output_layer:  # (hidden states, output weight) of each model
            (h_s, w_s), (h_t, w_t) = student_logits, teacher_logits
            return h_s, make_loss_func(
                ctx.kd, ctx.alpha, ctx.temperature, batch["labels"], batch["loss_mask"],
                FusedOutput(w_s, h_t, w_t, ctx.sequence_parallel), ctx.tp_group)
        # the logits are sequence-major [s, b, V/TP]: labels and mask [b, s] are transposed
        return student_logits, make_loss_func(
            ctx.kd, ctx.alpha, ctx.temperature, batch["labels"].t().contiguous(),
            batch["loss_mask"].t().contiguous(), OnlineLogits(teacher_logits), ctx.tp_group)

    return forward_step


def _forward_from_cache(ctx: StepContext, batch: dict, model):
    """KD step with the teacher's outputs read from the cache for this micro-batch's samples."""
    from megatron.core import parallel_state

    student_logits = model(batch["tokens"], batch["position_ids"], None, output_processor=sequence_major_logits)
    if not unwrap(model).post_process:  # not the last (virtual) pipeline stage: hidden states go on
        return student_logits, None
    rows = ctx.cache.rows(batch["sample_index"].cpu())
    width = student_logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * width
    teacher_logits = None
    sampled = getattr(ctx.cache, "sampled", False)
    if not cache_is_sparse(ctx.kd, ctx.alpha, rows, sampled):  # the sparse objective needs no teacher logits
        teacher_logits = dense_teacher_logits(rows, start, width, ctx.kd.opts.vocab_size, student_logits.device)
    return student_logits, make_loss_func(
        ctx.kd, ctx.alpha, ctx.temperature, batch["labels"].t().contiguous(), batch["loss_mask"].t().contiguous(),
        CachedRows(rows, teacher_logits, sampled), ctx.tp_group)


def _forward_unigram(ctx: StepContext, batch: dict, model):
    """KD step against the unigram teacher: the same log-probabilities at every position. Where
    a top-K cache's rows would serve the objective exactly (forward KL truncated to top-k, T = 1),
    the teacher's one top-k row is made once and broadcast, and the step takes the cached
    teachers' sparse objective (the same numbers, distill/sparse.py); the online route's per-token
    top-k search over identical rows cost 4x the student's own step (study v3). Otherwise the
    rank's vocabulary columns of the dense row (padding columns PADDING_LOGIT, never counted)."""
    from megatron.core import parallel_state

    student_logits = model(batch["tokens"], batch["position_ids"], None, output_processor=sequence_major_logits)
    if not unwrap(model).post_process:  # not the last (virtual) pipeline stage: hidden states go on
        return student_logits, None
    s, b, width = student_logits.shape
    labels, mask = batch["labels"].t().contiguous(), batch["loss_mask"].t().contiguous()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    opts = ctx.kd.opts
    if opts.top_k is not None and opts.top_p is None and ctx.temperature == 1.0:
        rows = _unigram_rows(ctx, width * tp, batch["labels"], student_logits.device)
        if cache_is_sparse(ctx.kd, ctx.alpha, rows):
            return student_logits, make_loss_func(
                ctx.kd, ctx.alpha, ctx.temperature, labels, mask, CachedRows(rows, None), ctx.tp_group)
    start = parallel_state.get_tensor_model_parallel_rank() * width
    row = torch.full((width,), PADDING_LOGIT, dtype=torch.float32)
    real = ctx.unigram[start:start + width]
    row[:real.numel()] = real
    teacher_logits = row.to(student_logits.device).expand(s, b, width).contiguous()
    return student_logits, make_loss_func(
        ctx.kd, ctx.alpha, ctx.temperature, labels, mask, OnlineLogits(teacher_logits), ctx.tp_group)


def _unigram_rows(ctx: StepContext, padded_width: int, labels: torch.Tensor, device) -> dict:
    """The unigram teacher as a top-k cache's rows `[b, s, ...]` for these labels `[b, s]`: its one
    row, as `distill.cache.teacher_rows` writes a teacher's (made once, on the whole padded
    vocabulary, so no rank needs another's columns, and kept on the student's device, so a step
    copies nothing to it), broadcast; the label's log-probability is read off the row."""
    if ctx.unigram_row is None:  # the width and top-k are the run's: made once
        z = torch.full((1, 1, padded_width), PADDING_LOGIT, dtype=torch.float32)
        z[0, 0, :ctx.unigram.numel()] = ctx.unigram
        row = teacher_rows(z, torch.zeros(1, 1, dtype=torch.int64), ctx.kd.opts.vocab_size,
                           ctx.kd.opts.top_k, group=None)
        # every label's log-probability in megatron-core's CE convention (softmax over every column)
        label_logp = torch.log_softmax(z.reshape(-1).double(), -1).float()
        ctx.unigram_row = ({k: v.reshape(v.shape[2:]).to(device) for k, v in row.items()}, label_logp.to(device))
    row, label_logp = ctx.unigram_row
    b, s = labels.shape
    out = {k: v.expand(b, s, *v.shape) for k, v in row.items() if k != "label_logp"}
    out["label_logp"] = label_logp[labels.to(device, torch.long)]
    return out


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
