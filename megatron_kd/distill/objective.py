"""The mixed objective (1 - α)·CE + α·T²·KD and the per-step distillation metrics.

`make_kd_loss_func` returns what megatron-core's schedules call on the last pipeline stage: a
function of the student logits giving (sum of per-token losses, token count, reports).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from megatron_kd.config.schema import KDConfig
from megatron_kd.distill.fused import fused_output_kd
from megatron_kd.distill.losses import ScratchPool, kd_loss, teacher_metrics
from megatron_kd.distill.mixed import mixed_kd_loss
from megatron_kd.distill.options import KDOptions
from megatron_kd.distill.sparse import sparse_kd_loss
from megatron_kd.distill.vocab_parallel import Shard, argmax_ids, valid_width


@dataclass(frozen=True)
class MixWeights:
    ce: float
    kd: float


@dataclass(frozen=True)
class KDObjective:
    """A run's KD objective, bound once from its KDConfig (and validated then). The scheduled α
    and T of each step are the only KD values that change; they are passed beside it, so no
    loss can read the recipe's unscheduled α or T by mistake."""

    opts: KDOptions  # kind, truncation, true vocabulary; temperature replaced per step
    mix: str
    chunk_size: int | None
    teacher_metrics: bool
    fused_output_layer: bool
    # the loss's reusable temporaries, for the objective's life (not part of its identity)
    scratch: ScratchPool = field(default_factory=ScratchPool, compare=False, repr=False)

    @classmethod
    def from_config(cls, kd: KDConfig, vocab_size: int) -> "KDObjective":
        mix_weights(kd.mix, kd.alpha)  # an unknown mix fails here, once
        return cls(KDOptions.from_config(kd, vocab_size), kd.mix, kd.chunk_size, kd.teacher_metrics,
                   kd.fused_output_layer)


def mix_weights(mix: str, alpha: float) -> MixWeights:
    """CE and KD weights for each mixing convention (the paper's is "convex")."""
    if mix == "convex":
        return MixWeights(1.0 - alpha, alpha)
    if mix == "keep_ce":
        return MixWeights(1.0, alpha)
    if mix == "keep_kd":
        return MixWeights(1.0 - alpha, 1.0)
    if mix == "magnitude_matched":  # KD rescaled to CE's magnitude in make_kd_loss_func
        return MixWeights(1.0 - alpha, alpha)
    raise ValueError(f"unknown kd.mix {mix!r}")


def _pair(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.stack([total.detach().float(), count.detach().float()])


def _reports(count, ce_sum, kd_sum, total, teacher_sums=None) -> dict[str, torch.Tensor]:
    """The per-step reports both loss paths give megatron-core's schedule: (masked sum, token
    count) pairs, averaged over micro-batches and data-parallel ranks by the training loop.
    `teacher_sums`: masked sums of teacher CE, teacher entropy and top-1 agreement, or None."""
    reports = {"lm loss": _pair(ce_sum, count), "kd loss": _pair(kd_sum, count),
               "loss": _pair(total, count)}
    if teacher_sums is not None:
        for key, value in zip(("teacher lm loss", "teacher entropy", "top1 agreement"), teacher_sums):
            reports[key] = _pair(value, count)
    return reports


def make_kd_loss_func(kd: KDObjective, alpha: float, temperature: float, labels, loss_mask,
                      teacher_logits, tp_group):
    """The loss function of the unfused path, for logits `[..., V/TP]` of both models and labels
    and loss_mask `[...]` in the same token order: CE, KD and teacher metrics in one pass over the
    logits (mixed.py), except where that cannot give the same result: kd.mix=magnitude_matched
    (its KD weight depends on the whole micro-batch's sums) and a KD weight of 0 (α = 0 stays
    bit for bit the plain pretraining run, megatron-core's CE)."""
    w = mix_weights(kd.mix, alpha)
    if kd.mix == "magnitude_matched" or w.kd == 0:
        return _separate_kd_loss_func(kd, alpha, temperature, labels, loss_mask, teacher_logits, tp_group)
    opts = kd.opts.at(temperature)

    def loss_func(student_logits: torch.Tensor):
        mask = loss_mask.float()
        count = mask.sum()
        total, sums = mixed_kd_loss(
            student_logits, teacher_logits, labels, mask, opts, ce_weight=w.ce, kd_weight=w.kd,
            tp_group=tp_group, chunk_size=kd.chunk_size, metrics=kd.teacher_metrics,
            overwrite_logits=True, scratch=kd.scratch)  # their last reader
        return total, count.to(torch.int), _sums_reports(kd, count, total, sums)

    return loss_func


def _sums_reports(kd: KDObjective, count, total, sums) -> dict:
    teacher_sums = None
    if kd.teacher_metrics:
        teacher_sums = (sums["teacher_ce"], sums["teacher_entropy"], sums["top1_agreement"])
    return _reports(count, sums["ce"], sums["kd"], total, teacher_sums)


def _separate_kd_loss_func(kd: KDObjective, alpha: float, temperature: float, labels, loss_mask,
                           teacher_logits, tp_group):
    """megatron-core's CE, `kd_loss` and `teacher_metrics`, each its own pass, on sequence-major
    logits `[s, b, V/TP]` with labels and loss_mask `[s, b]`."""
    from megatron.core import tensor_parallel

    w = mix_weights(kd.mix, alpha)
    opts = kd.opts.at(temperature)

    def loss_func(student_logits: torch.Tensor):
        # Order matters: megatron-core's vocab_parallel_cross_entropy overwrites its input with
        # the softmax (in place, for fp32 logits), so every reader of the logits goes first and
        # each cross entropy is the last use of its logits.
        mask = loss_mask.float()
        count = mask.sum()
        kd_tok = kd_loss(student_logits, teacher_logits, opts, loss_mask=mask, tp_group=tp_group,
                         chunk_size=kd.chunk_size)
        teacher_sums = None
        if kd.teacher_metrics:
            shard = Shard(student_logits.shape[-1], opts.vocab_size, tp_group, student_logits.device)
            width = student_logits.shape[-1]
            per_tok = teacher_metrics(student_logits.detach().reshape(-1, width),
                                      teacher_logits.reshape(-1, width), labels, shard)
            teacher_sums = (per_tok * mask.reshape(1, -1)).sum(-1).unbind(0)
        ce = tensor_parallel.vocab_parallel_cross_entropy(student_logits.float(), labels, tp_group=tp_group)
        # Summed in the batch-major order of megatron-core's own LM loss (steps.lm_loss_func):
        # at α = 0 the run is plain pretraining bit for bit, its reported loss included.
        ce_sum = torch.sum(ce.t().reshape(-1) * mask.t().reshape(-1))
        kd_sum = kd_tok.sum()
        kd_weight = w.kd
        if kd.mix == "magnitude_matched" and kd_sum.item() > 0:
            kd_weight = w.kd * (ce_sum.detach() / kd_sum.detach())
        total = w.ce * ce_sum + kd_weight * kd_sum
        reports = _reports(count, ce_sum, kd_sum, total, teacher_sums)
        return total, count.to(torch.int), reports

    return loss_func


def _tokens_first(h: torch.Tensor, tp_group, sequence_parallel: bool, trainable: bool) -> torch.Tensor:
    """`[s(/TP), b, h]` hidden states -> `[b*s, h]` in the labels' order, whole sequence on every
    TP rank. The gather / copy's backward sums the vocabulary shards' partial input gradients
    (what the output layer's ColumnParallelLinear does in the unfused path)."""
    from megatron.core import tensor_parallel

    if sequence_parallel:
        h = tensor_parallel.gather_from_sequence_parallel_region(
            h, tensor_parallel_output_grad=True, group=tp_group)
    elif trainable:
        h = tensor_parallel.copy_to_tensor_model_parallel_region(h, group=tp_group)
    return h.transpose(0, 1).reshape(-1, h.shape[-1])


def make_fused_kd_loss_func(kd: KDObjective, alpha: float, temperature: float, labels, loss_mask,
                            student_weight, teacher_hidden, teacher_weight, tp_group,
                            sequence_parallel: bool):
    """The loss function of kd.fused_output_layer: same objective and reports as
    make_kd_loss_func, from hidden states and output weights (megatron_kd/distill/fused.py)."""
    w = mix_weights(kd.mix, alpha)
    opts = kd.opts.at(temperature)

    def loss_func(student_hidden: torch.Tensor):
        mask = loss_mask.float().reshape(-1)
        count = mask.sum()
        with torch.no_grad():
            h_t = _tokens_first(teacher_hidden, tp_group, sequence_parallel, trainable=False)
        h_s = _tokens_first(student_hidden, tp_group, sequence_parallel, trainable=True)
        total, sums = fused_output_kd(
            h_s, student_weight, h_t, teacher_weight, labels.reshape(-1), mask, opts,
            ce_weight=w.ce, kd_weight=w.kd, tp_group=tp_group, chunk_size=kd.chunk_size,
            metrics=kd.teacher_metrics, scratch=kd.scratch)
        return total, count.to(torch.int), _sums_reports(kd, count, total, sums)

    return loss_func


def cache_is_sparse(kd: KDObjective, alpha: float, rows: dict) -> bool:
    """Whether a KD step from these cache rows takes the sparse objective (distill/sparse.py: a
    top-K cache, forward KL) or the online objective on rebuilt teacher logits (the rest)."""
    return ("ids" in rows and kd.opts.kind == "forward_kl" and kd.mix != "magnitude_matched"
            and mix_weights(kd.mix, alpha).kd != 0)


def make_cached_kd_loss_func(kd: KDObjective, alpha: float, temperature: float, labels, loss_mask,
                             teacher_logits, rows: dict, tp_group):
    """The loss function of a KD step from the teacher cache: the unfused objective on the
    teacher logits rebuilt from the cache rows (distill/cache.py), with the teacher metrics taken
    from the cached values (exact, where rebuilt logits would only approximate a top-K teacher).
    `rows` are sample-major `[b, s, ...]`; labels, loss_mask and the logits sequence-major."""
    w = mix_weights(kd.mix, alpha)
    if cache_is_sparse(kd, alpha, rows):
        # a top-K cache: the kept set is known, so no teacher logits and no top-k search
        def inner(student_logits: torch.Tensor):
            mask = loss_mask.float()
            count = mask.sum()
            seq = lambda t: t.transpose(0, 1)  # noqa: E731  rows [b, s, ...] -> the logits' token order
            total, sums = sparse_kd_loss(
                student_logits, seq(rows["ids"]).to(student_logits.device),
                seq(rows["logp"]).to(student_logits.device), seq(rows["other_logp"]).to(student_logits.device),
                labels, mask, top_k=kd.opts.top_k, other_bucket=kd.opts.other_bucket, ce_weight=w.ce,
                kd_weight=w.kd, vocab_size=kd.opts.vocab_size, tp_group=tp_group, chunk_size=kd.chunk_size)
            return total, count.to(torch.int), _reports(count, sums["ce"], sums["kd"], total)
    else:
        inner = make_kd_loss_func(dataclasses.replace(kd, teacher_metrics=False), alpha, temperature, labels,
                                  loss_mask, teacher_logits, tp_group)

    def loss_func(student_logits: torch.Tensor):
        mask = loss_mask.float()
        teacher_sums = None
        if kd.teacher_metrics:  # before the objective, which writes its gradient over the logits
            width = student_logits.shape[-1]
            shard = Shard(width, kd.opts.vocab_size, tp_group, student_logits.device)
            nv = valid_width(shard)
            student_top = argmax_ids(student_logits.detach().reshape(-1, width)[:, :nv], shard)
            if "ids" in rows:
                teacher_top = rows["ids"][..., 0]
            else:  # full cache: the first of the largest (the online tie rule)
                teacher_top = torch.argmax(rows["logp"], dim=-1)
            teacher_top = teacher_top.t().reshape(-1).to(student_top.device, torch.int64)
            flat = mask.reshape(-1)
            agree = (student_top == teacher_top).float()
            ce = -rows["label_logp"].t().reshape(-1).to(flat.device)
            ent = rows["entropy"].t().reshape(-1).to(flat.device)
            teacher_sums = ((ce * flat).sum(), (ent * flat).sum(), (agree * flat).sum())
        total, count, reports = inner(student_logits)
        if teacher_sums is not None:
            c = mask.sum()
            for key, value in zip(("teacher lm loss", "teacher entropy", "top1 agreement"), teacher_sums):
                reports[key] = _pair(value, c)
        return total, count, reports

    return loss_func
