"""The mixed objective (1 - α)·CE + α·T²·KD and the per-step distillation metrics.

`make_loss_func` is the one entrance: given what the teacher gave this micro-batch (its logits,
its hidden states and output weight, the cache's rows, or the unigram distribution) it chooses
the objective (`choose_route`: the one place that does) and returns what megatron-core's
schedules call on the last pipeline stage, a function of the student's output giving (sum of
per-token losses, token count, reports). Every route gives the same report type (`LossSums`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Union

import torch

from megatron_kd.config.schema import KDConfig
from megatron_kd.distill.auto_alpha import AdvantageTrend, AutoAlpha, auto_sums
from megatron_kd.distill.cache import PADDING_LOGIT, dense_teacher_logits, teacher_rows
from megatron_kd.distill.fused import fused_output_kd
from megatron_kd.distill.losses import ScratchPool, kd_loss, teacher_metrics
from megatron_kd.distill.mixed import mixed_kd_loss
from megatron_kd.distill.options import KDOptions
from megatron_kd.distill.sparse import sparse_kd_loss
from megatron_kd.distill.vocab_parallel import Shard, argmax_ids, group_rank, group_size, valid_width


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
    # the unigram teacher's one top-k row per (padded vocabulary, device): made at the first step
    unigram_rows: dict = field(default_factory=dict, compare=False, repr=False)
    # kd.auto: the advantage scale τ (nats); None: the scheduled α
    auto_tau: float | None = None
    # kd.auto: the running mean of the teacher's advantage that sets each micro-batch's α
    trend: AdvantageTrend = field(default_factory=AdvantageTrend, compare=False, repr=False)
    # kd.auto: the ranks that hold other tokens of each micro-batch (the data-parallel group),
    # whose advantage sums make one trend update, so that every rank uses the same α; None: one
    trend_group: object = field(default=None, compare=False, repr=False)

    @classmethod
    def from_config(cls, kd: KDConfig, vocab_size: int, data_parallel_group=None) -> "KDObjective":
        mix_weights(kd.mix, kd.alpha)  # an unknown mix fails here, once
        return cls(KDOptions.from_config(kd, vocab_size), kd.mix, kd.chunk_size, kd.teacher_metrics,
                   kd.fused_output_layer, auto_tau=kd.auto.tau if kd.auto.enabled else None,
                   trend_group=data_parallel_group)

    def auto_alpha(self, alpha: float) -> AutoAlpha | None:
        """kd.auto's weighting of the next micro-batch, under the ceiling `alpha` (the step's
        kd.alpha); None for a fixed α."""
        if self.auto_tau is None:
            return None
        return AutoAlpha(alpha, self.trend.level(alpha, self.auto_tau), self.mix)

    def state_dict(self) -> dict:
        """What a resumed run needs beyond the config (plain JSON values): kd.auto's advantage
        trend (its mean is None for a fixed α, or before the first micro-batch)."""
        return {"auto_trend": self.trend.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"auto_trend"}:
            raise ValueError(f"the KD objective's saved state must be {{'auto_trend': ...}}, got {state!r}: "
                             f"the checkpoint is damaged; resume from another one")
        self.trend.load_state_dict(state["auto_trend"])


def mix_weights(mix: str, alpha: float) -> MixWeights:
    """CE and KD weights for each mixing convention (the paper's is "convex")."""
    if mix == "convex":
        return MixWeights(1.0 - alpha, alpha)
    if mix == "keep_ce":
        return MixWeights(1.0, alpha)
    if mix == "keep_kd":
        return MixWeights(1.0 - alpha, 1.0)
    if mix == "magnitude_matched":  # KD rescaled to CE's magnitude in _separate_passes
        return MixWeights(1.0 - alpha, alpha)
    raise ValueError(f"unknown kd.mix {mix!r}")


@dataclass(frozen=True)
class OnlineLogits:
    """The teacher's vocab-parallel logits, in the student logits' token order."""

    logits: torch.Tensor


@dataclass(frozen=True)
class FusedOutput:
    """kd.fused_output_layer: the teacher's last hidden states and both output weights; the
    student's output is its hidden states (megatron_kd/distill/fused.py)."""

    student_weight: torch.Tensor
    hidden: torch.Tensor
    weight: torch.Tensor
    sequence_parallel: bool


@dataclass(frozen=True)
class CachedRows:
    """The teacher cache's rows for the micro-batch (sample-major `[b, s, ...]`)."""

    rows: dict
    sampled: bool = False  # a sampled cache (random-sampling KD, distill/cache.py)


@dataclass(frozen=True)
class UnigramTeacher:
    """teacher.unigram: log p over the real vocabulary `[V]`, the same target at every token
    (distill/unigram.py)."""

    logp: torch.Tensor


NO_LABEL_LOGP = ("this teacher cache has no label_logp, which kd.auto.enabled needs: write it again with "
                 "mkd teacher-cache, or set kd.auto.enabled=false")
TeacherSignal = Union[OnlineLogits, FusedOutput, CachedRows, UnigramTeacher]
TEACHER_REPORTS = ("teacher lm loss", "teacher entropy", "top1 agreement")
AUTO_REPORTS = ("kd/alpha_effective", "kd/auto_share", "kd/teacher_advantage")  # kd.auto (auto_alpha.py)


@dataclass(frozen=True)
class LossSums:
    """A micro-batch's masked sums: the mixed loss, its CE and KD terms, and (kd.teacher_metrics)
    the teacher's CE, entropy and top-1 agreement with the student, and (kd.auto) Σ α_t, the
    tokens the teacher leads on and Σ a_t."""

    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    teacher: tuple | None = None
    auto: tuple | None = None

    def reports(self, count: torch.Tensor) -> dict[str, torch.Tensor]:
        """megatron-core's per-step reports: (masked sum, token count) pairs, averaged over
        micro-batches and data-parallel ranks by the training loop."""
        pairs = {"lm loss": self.ce, "kd loss": self.kd, "loss": self.total}
        if self.teacher is not None:
            pairs.update(zip(TEACHER_REPORTS, self.teacher))
        if self.auto is not None:
            pairs.update(zip(AUTO_REPORTS, self.auto))
        return {key: torch.stack([value.detach().float(), count.detach().float()]) for key, value in pairs.items()}


def _teacher_sums(sums: dict, kd: KDObjective) -> tuple | None:
    if not kd.teacher_metrics:
        return None
    return sums["teacher_ce"], sums["teacher_entropy"], sums["top1_agreement"]


def make_loss_func(kd: KDObjective, alpha: float, temperature: float, labels, loss_mask,
                   teacher: TeacherSignal, tp_group) -> Callable:
    """The loss function of a KD micro-batch. Labels and loss_mask are in the student output's
    token order (sequence-major `[s, b]` for logits); the student's output is its logits
    `[..., V/TP]`, or its hidden states for FusedOutput."""
    w = mix_weights(kd.mix, alpha)
    opts = kd.opts.at(temperature)
    route = choose_route(kd, alpha, temperature, teacher)
    auto = kd.auto_alpha(alpha)
    if auto is not None and route == "separate":
        raise ValueError(f"kd.auto needs kd.alpha > 0 (its ceiling) and a kd.mix other than magnitude_matched, "
                         f"got kd.alpha={alpha}, kd.mix={kd.mix}")
    trend = None if auto is None else partial(kd.trend.update, group=kd.trend_group)
    if route == "fused":
        return _counted(_fused(kd, w, opts, labels, teacher, tp_group, auto), loss_mask, trend)
    # a teacher that is not a model reports the teacher metrics from its own values (exact, where
    # rebuilt logits would only approximate a top-K teacher); the dense unigram row is its logits
    rows = _teacher_rows(kd, teacher, labels, tp_group, sparse=route == "sparse")
    inner_kd = kd if rows is None else dataclasses.replace(kd, teacher_metrics=False)
    if route == "sparse":
        objective = _sparse(inner_kd, w, labels, rows, tp_group, auto)
    elif route == "separate":
        objective = _separate_passes(inner_kd, w, opts, labels, _dense_teacher(kd, teacher, tp_group), tp_group)
    else:
        objective = _one_pass(inner_kd, w, opts, labels, _dense_teacher(kd, teacher, tp_group), tp_group, auto,
                              _stored_label_logp(teacher, auto))
    if rows is not None and kd.teacher_metrics:
        objective = _with_cached_metrics(kd, rows, objective, tp_group)
    return _counted(objective, loss_mask, trend)


def choose_route(kd: KDObjective, alpha: float, temperature: float, teacher: TeacherSignal) -> str:
    """How a micro-batch's loss is computed, from the raw teacher signal (the one place that
    decides): "fused" (hidden states and output weights: fused.py), "sparse" (the teacher's kept
    ids: a top-K or sampled cache, or the unigram's one top-k row; sparse.py), "separate"
    (magnitude_matched, whose KD weight depends on the whole micro-batch's sums, and α = 0, which
    stays bit for bit the plain pretraining run: megatron-core's CE, kd_loss, teacher metrics) or
    "one_pass" (mixed.py) on dense teacher logits, rebuilt where the signal is not logits."""
    w = mix_weights(kd.mix, alpha)
    if isinstance(teacher, FusedOutput):
        return "fused"
    if isinstance(teacher, CachedRows) and cache_is_sparse(kd, alpha, teacher.rows, teacher.sampled):
        return "sparse"
    if isinstance(teacher, UnigramTeacher) and _unigram_is_sparse(kd, w, temperature):
        return "sparse"
    if kd.mix == "magnitude_matched" or w.kd == 0:
        return "separate"
    return "one_pass"


def cache_is_sparse(kd: KDObjective, alpha: float, rows: dict, sampled: bool = False) -> bool:
    """Whether a KD step from these cache rows takes the sparse objective (a top-K or sampled
    cache, forward KL) or the dense objective on rebuilt teacher logits (the rest). A sampled cache
    always takes the sparse one: its rows rebuild no teacher logits."""
    return ("ids" in rows and kd.opts.kind == "forward_kl" and kd.mix != "magnitude_matched"
            and (sampled or mix_weights(kd.mix, alpha).kd != 0))


def _unigram_is_sparse(kd: KDObjective, w: MixWeights, temperature: float) -> bool:
    """The unigram's one top-k row serves forward KL truncated to top-k at T = 1 exactly (as a
    top-K cache's rows would); the online route's per-token top-k search over identical rows cost
    4x the student's own step (study v3)."""
    o = kd.opts
    return (o.kind == "forward_kl" and o.top_k is not None and o.top_p is None and temperature == 1.0
            and kd.mix != "magnitude_matched" and w.kd != 0)


def _counted(objective, loss_mask, update_trend: Callable | None = None) -> Callable:
    def loss_func(student_output: torch.Tensor):
        mask = loss_mask.float()
        count = mask.sum()
        sums = objective(student_output, mask)
        if update_trend is not None:  # kd.auto: the next micro-batch's α follows this one's advantage
            update_trend(sums.auto[2], count)
        return sums.total, count.to(torch.int), sums.reports(count)

    return loss_func


def _teacher_rows(kd: KDObjective, teacher: TeacherSignal, labels, tp_group, sparse: bool) -> Callable | None:
    """A function of the student's logits giving the teacher's rows `[b, s, ...]` (cache-row
    fields), for the signals that come as rows: a cache's, or the unigram's top-k row where the
    sparse objective takes it; None for logits (online teachers, the dense unigram)."""
    if isinstance(teacher, CachedRows):
        return lambda student_logits: teacher.rows
    if isinstance(teacher, UnigramTeacher) and sparse:
        return lambda student_logits: _unigram_rows(kd, teacher.logp, student_logits, labels.t(), tp_group)
    return None


def _dense_teacher(kd: KDObjective, teacher: TeacherSignal, tp_group) -> Callable:
    """A function of the student's logits `[s, b, V/TP]` giving the teacher's logits for the same
    vocabulary columns: the online teacher's; rebuilt from a cache's rows (distill/cache.py); the
    unigram row broadcast (padding columns PADDING_LOGIT, never counted)."""
    if isinstance(teacher, OnlineLogits):
        return lambda student_logits: teacher.logits

    def rebuilt(student_logits):
        s, b, width = student_logits.shape
        start = group_rank(tp_group) * width
        if isinstance(teacher, CachedRows):
            return dense_teacher_logits(teacher.rows, start, width, kd.opts.vocab_size, student_logits.device)
        row = torch.full((width,), PADDING_LOGIT, dtype=torch.float32)
        real = teacher.logp[start:start + width]
        row[:real.numel()] = real
        return row.to(student_logits.device).expand(s, b, width).contiguous()

    return rebuilt


def _unigram_rows(kd: KDObjective, logp: torch.Tensor, student_logits, labels: torch.Tensor, tp_group) -> dict:
    """The unigram teacher as a top-k cache's rows `[b, s, ...]` for these labels `[b, s]`: its one
    row, as `distill.cache.teacher_rows` writes a teacher's (made once per padded vocabulary and
    device, on the whole padded vocabulary, so no rank needs another's columns, and kept on the
    student's device, so a step copies nothing to it), broadcast; the label's log-probability is
    read off the row."""
    device = student_logits.device
    key = (student_logits.shape[-1] * group_size(tp_group), str(device))
    if key not in kd.unigram_rows:
        padded_width = key[0]
        z = torch.full((1, 1, padded_width), PADDING_LOGIT, dtype=torch.float32)
        z[0, 0, :logp.numel()] = logp
        row = teacher_rows(z, torch.zeros(1, 1, dtype=torch.int64), kd.opts.vocab_size, kd.opts.top_k, group=None)
        # every label's log-probability in megatron-core's CE convention (softmax over every column)
        label_logp = torch.log_softmax(z.reshape(-1).double(), -1).float()
        kd.unigram_rows[key] = ({k: v.reshape(v.shape[2:]).to(device) for k, v in row.items()}, label_logp.to(device))
    row, label_logp = kd.unigram_rows[key]
    b, s = labels.shape
    out = {k: v.expand(b, s, *v.shape) for k, v in row.items() if k != "label_logp"}
    out["label_logp"] = label_logp[labels.to(device, torch.long)]
    return out


def _stored_label_logp(teacher: TeacherSignal, auto: AutoAlpha | None) -> torch.Tensor | None:
    """kd.auto from a top-K cache on the dense route (kd.kind=hard): the teacher's label
    log-probability `[s, b]` from the rows, which hold it for every label, where the rebuilt
    logits hold it only for the K kept ids. A full cache's rebuilt logits are its whole
    distribution; online and unigram logits are the teacher's own: None, read off the logits."""
    if auto is None or not isinstance(teacher, CachedRows) or "ids" not in teacher.rows:
        return None
    if "label_logp" not in teacher.rows:
        raise ValueError(NO_LABEL_LOGP)
    return teacher.rows["label_logp"].transpose(0, 1)


def _one_pass(kd, w, opts, labels, teacher, tp_group, auto, label_logp=None):
    """CE, KD and teacher metrics in one pass over the logits (mixed.py)."""
    def objective(student_logits, mask):
        total, sums = mixed_kd_loss(
            student_logits, teacher(student_logits), labels, mask, opts, ce_weight=w.ce, kd_weight=w.kd,
            tp_group=tp_group, chunk_size=kd.chunk_size, metrics=kd.teacher_metrics,
            overwrite_logits=True, scratch=kd.scratch, auto=auto,  # their last reader
            teacher_label_logp=label_logp)
        return LossSums(total, sums["ce"], sums["kd"], _teacher_sums(sums, kd), _auto_sums(sums, auto))

    return objective


def _separate_passes(kd, w, opts, labels, teacher, tp_group):
    """megatron-core's CE, `kd_loss` and `teacher_metrics`, each its own pass, on sequence-major
    logits `[s, b, V/TP]` with labels and loss_mask `[s, b]`."""
    from megatron.core import tensor_parallel

    def objective(student_logits, mask):
        teacher_logits = teacher(student_logits)
        # Order matters: megatron-core's vocab_parallel_cross_entropy overwrites its input with
        # the softmax (in place, for fp32 logits), so every reader of the logits goes first and
        # each cross entropy is the last use of its logits.
        kd_tok = kd_loss(student_logits, teacher_logits, opts, loss_mask=mask, tp_group=tp_group,
                         chunk_size=kd.chunk_size)
        metrics = None
        if kd.teacher_metrics:
            width = student_logits.shape[-1]
            shard = Shard(width, opts.vocab_size, tp_group, student_logits.device)
            per_tok = teacher_metrics(student_logits.detach().reshape(-1, width),
                                      teacher_logits.reshape(-1, width), labels, shard)
            metrics = tuple((per_tok * mask.reshape(1, -1)).sum(-1).unbind(0))
        ce = tensor_parallel.vocab_parallel_cross_entropy(student_logits.float(), labels, tp_group=tp_group)
        # Summed in the batch-major order of megatron-core's own LM loss (steps.lm_loss_func):
        # at α = 0 the run is plain pretraining bit for bit, its reported loss included.
        ce_sum = torch.sum(ce.t().reshape(-1) * mask.t().reshape(-1))
        kd_sum = kd_tok.sum()
        kd_weight = w.kd
        if kd.mix == "magnitude_matched" and kd_sum.item() > 0:
            kd_weight = w.kd * (ce_sum.detach() / kd_sum.detach())
        return LossSums(w.ce * ce_sum + kd_weight * kd_sum, ce_sum, kd_sum, metrics)

    return objective


def _auto_sums(sums: dict, auto: AutoAlpha | None) -> tuple | None:
    return None if auto is None else auto_sums(sums)


def _sparse(kd, w, labels, rows, tp_group, auto):
    """Forward KL over the teacher's kept ids (a top-K or sampled cache's rows, or the unigram's
    top-k row) with CE, on the student's logits (sparse.py): no teacher logits. kd.auto reads the
    teacher's label log-probability from the rows (every cache kind stores it)."""
    def objective(student_logits, mask):
        got = rows(student_logits)
        seq = lambda t: t.transpose(0, 1).to(student_logits.device)  # noqa: E731  [b, s, ...] -> [s, b, ...]
        label_logp = None
        if auto is not None:
            if "label_logp" not in got:
                raise ValueError(NO_LABEL_LOGP)
            label_logp = seq(got["label_logp"])
        total, sums = sparse_kd_loss(
            student_logits, seq(got["ids"]), seq(got["logp"]), seq(got["other_logp"]), labels, mask,
            top_k=kd.opts.top_k or got["ids"].shape[-1], other_bucket=kd.opts.other_bucket,
            ce_weight=w.ce, kd_weight=w.kd, vocab_size=kd.opts.vocab_size, tp_group=tp_group,
            chunk_size=kd.chunk_size, label_logp=label_logp, auto=auto)
        return LossSums(total, sums["ce"], sums["kd"], auto=_auto_sums(sums, auto))

    return objective


def _with_cached_metrics(kd, rows, inner, tp_group):
    """`inner` with the teacher metrics from the teacher's rows, read before it (it writes its
    gradient over the logits)."""
    def objective(student_logits, mask):
        cached = _cached_teacher_sums(kd, rows(student_logits), student_logits, mask, tp_group)
        return dataclasses.replace(inner(student_logits, mask), teacher=cached)

    return objective


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


def _fused(kd, w, opts, labels, teacher: FusedOutput, tp_group, auto):
    """kd.fused_output_layer: the same objective from hidden states and output weights, labels
    and loss_mask batch-major `[b, s]` (the hidden states' order after _tokens_first)."""
    def objective(student_hidden, mask):
        with torch.no_grad():
            h_t = _tokens_first(teacher.hidden, tp_group, teacher.sequence_parallel, trainable=False)
        h_s = _tokens_first(student_hidden, tp_group, teacher.sequence_parallel, trainable=True)
        total, sums = fused_output_kd(
            h_s, teacher.student_weight, h_t, teacher.weight, labels.reshape(-1), mask.reshape(-1), opts,
            ce_weight=w.ce, kd_weight=w.kd, tp_group=tp_group, chunk_size=kd.chunk_size,
            metrics=kd.teacher_metrics, scratch=kd.scratch, auto=auto)
        return LossSums(total, sums["ce"], sums["kd"], _teacher_sums(sums, kd), _auto_sums(sums, auto))

    return objective


def _cached_teacher_sums(kd, rows, student_logits, mask, tp_group) -> tuple:
    """Teacher CE, entropy and top-1 agreement from the cache rows; read before the objective,
    which writes its gradient over the logits."""
    width = student_logits.shape[-1]
    shard = Shard(width, kd.opts.vocab_size, tp_group, student_logits.device)
    student_top = argmax_ids(student_logits.detach().reshape(-1, width)[:, :valid_width(shard)], shard)
    if "ids" in rows:
        teacher_top = rows["ids"][..., 0]
    else:  # full cache: the first of the largest (the online tie rule)
        teacher_top = torch.argmax(rows["logp"], dim=-1)
    teacher_top = teacher_top.t().reshape(-1).to(student_top.device, torch.int64)
    flat = mask.reshape(-1)
    agree = (student_top == teacher_top).float()
    ce = -rows["label_logp"].t().reshape(-1).to(flat.device)
    ent = rows["entropy"].t().reshape(-1).to(flat.device)
    return (ce * flat).sum(), (ent * flat).sum(), (agree * flat).sum()
