"""The mixed objective ce_weight·CE + kd_weight·KD, with the teacher metrics, in one pass over
vocab-parallel logits.

`mixed_kd_loss(student_logits, teacher_logits, labels, loss_mask, ...)` returns the mixed loss
`ce_weight·Σ mask·CE + kd_weight·Σ mask·KD` (a scalar) and the masked per-step sums
{ce, kd, teacher_ce, teacher_entropy, top1_agreement}. CE is megatron-core's
`vocab_parallel_cross_entropy` (softmax over every column, padding included); KD is `kd_loss`'s
(padding excluded); teacher CE and entropy are the unfused objective's `teacher_metrics`.

Why one pass: computed separately, CE, KD and the teacher metrics each exponentiate the logits
they read (two exps per model per token and vocabulary column). For the paper's forward KL at
T = 1, `RowLoss` takes all of them from one exp per model: the student's exponentials serve CE
and KD, the teacher's serve KD and the teacher's CE and entropy. Other kinds and temperatures
take the general route (teacher metrics, CE and `kd_loss`'s arithmetic one after another).

The gradient w.r.t. the student logits is computed in the forward pass, chunk by chunk over
tokens, into one logits-sized buffer, or over the student's logits themselves
(`overwrite_logits`, what the training objective does: no logits-sized buffer at all);
backward only scales it (losses.ChunkedLoss, every objective's one autograd.Function, with
`RowLoss` as its row kernel). `fused_output_kd` (fused.py) runs the same `RowLoss` on logits it
makes chunk by chunk from hidden states.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megatron_kd.distill.auto_alpha import AUTO_STATS, AutoAlpha
from megatron_kd.distill.losses import (
    ChunkedLoss,
    DenseKD,
    LogitRows,
    RowKernel,
    Scratch,
    ScratchPool,
    require_same_shape,
    teacher_metrics,
)
from megatron_kd.distill.options import KDOptions
from megatron_kd.distill.vocab_parallel import LabelColumns, Shard, all_reduce, cross_entropy, row_sum, valid_width

STATS = ("ce", "kd", "teacher_ce", "teacher_entropy", "top1_agreement")


class RowLoss(RowKernel):
    """The dense row kernels of the mixed objective (distill.losses.ChunkedLoss): CE, KD and
    teacher metrics of a few rows of logits at a time, from one exp per model for the plain
    forward KL at T = 1 (`_ce_kd_at_t1`), else the cross entropy and the general dense kernel
    (losses.DenseKD) one after the other. Holds what every chunk of one call shares: the options,
    weights, vocabulary shards and reused temporaries."""

    stats = STATS
    mixed = True  # its chunks: the mixed objectives' (default_row_chunk)
    any_dtype = False  # writes fp32 gradients

    def __init__(self, opt: KDOptions, ce_weight: float, kd_weight: float, width: int, group,
                 device, metrics: bool, scratch: ScratchPool | None = None, auto: AutoAlpha | None = None):
        self.opt, self.ce_weight, self.kd_weight, self.metrics = opt, ce_weight, kd_weight, metrics
        # kd.auto: the micro-batch's α, as per-row weights (the kernels take either), and the
        # teacher's advantage on each label, read for the reports and the run's trend (auto_alpha.py)
        self.auto = auto
        if auto is not None:
            self.stats = STATS + AUTO_STATS
        self.shard_kd = Shard(width, opt.vocab_size, group, device)  # padding excluded (KD)
        self.shard_all = Shard(width, None, group, device)  # megatron's CE: every column
        self.fast = opt.kind == "forward_kl" and opt.top_k is None and opt.top_p is None
        self.one_exp = self.fast and opt.temperature == 1.0
        self.scratch = (scratch or ScratchPool()).get("rows", device)  # RowLoss's 4 chunk temporaries
        self.dense = DenseKD(opt, width, group, device, self.scratch)
        self.kd_grad, self.general_grad = Scratch(), Scratch()
        self._desc = None  # _first_max_ids' column scores

    def add(self, zs, zt, labels, w, g, stats) -> None:
        """Masked sums of rows `zs`/`zt` ([n, V/TP], any float dtype) into `stats` ([5] float64),
        the mixed loss's gradient w.r.t. `zs` into `g` ([n, V/TP] fp32), weighted by `w` [n].
        `zt` may come with the teacher's stored label log-probabilities (`TeacherWithLabels`)."""
        zt, teacher_label = (zt.logits, zt.label_logp) if isinstance(zt, TeacherWithLabels) else (zt, None)
        if self.one_exp:
            got = self._ce_kd_at_t1(zs, zt, labels, w, g, teacher_label)
            if got is not None:  # rows: ce, kd, teacher ce, teacher entropy, top-1 agreement
                rows, weights = got
                wd = w.double()
                kd = torch.where(w > 0, rows[1], torch.zeros_like(wd))
                stats[0] += (rows[0] * wd).sum()
                stats[1] += (kd * wd).sum()
                if self.metrics:
                    stats[2:5] += rows[2:].mul(wd).sum(-1)
                if weights is not None:
                    self.auto.add_stats(stats, rows[0], kd, w, *weights)
                return
        if g.untyped_storage().data_ptr() == zs.untyped_storage().data_ptr():
            # g overwrites the logits (mixed_kd_loss(overwrite_logits=True)), which the general
            # route reads again after writing its CE gradient: a buffer in between
            tmp = self.general_grad.take(1, g.shape[0], g.shape[1], g.device)[0]
            self._general(zs, zt, labels, w, tmp, stats, teacher_label)
            g.copy_(tmp)
            return
        self._general(zs, zt, labels, w, g, stats, teacher_label)

    def _general(self, zs, zt, labels, w, g, stats, teacher_label=None) -> None:
        """Every kind, temperature and hostile input: teacher metrics, CE and KD one by one."""
        teacher_ce = None
        if self.metrics:
            per_tok = teacher_metrics(zs, zt, labels, self.shard_kd)
            stats[2:5] += (per_tok.double() * w.double()).sum(-1)
            teacher_ce = per_tok[0]
        label = LabelColumns(labels, self.shard_all)
        if self.auto is None:
            ce, _, _ = cross_entropy(zs, label, self.shard_all.group, g, w * self.ce_weight)
            kd_weight = w * self.kd_weight
        else:  # the weights come with the CE: its unit-weight gradient, scaled per row after
            if teacher_label is not None:  # kd.auto's advantage: the stored value, not the rebuilt logits'
                teacher_ce = -teacher_label.double()
            elif teacher_ce is None:
                teacher_ce = cross_entropy(zt, label, self.shard_all.group)[0]
            ce, _, _ = cross_entropy(zs, label, self.shard_all.group, g, w)
            weights = self.auto.weights(ce, teacher_ce)
            g.mul_(weights[2].float().unsqueeze(-1))
            kd_weight = (w.double() * weights[3]).float()
        stats[0] += (ce * w.double()).sum()
        g_kd = self.kd_grad.take(1, g.shape[0], g.shape[1], g.device)[0]
        kd = torch.where(w > 0, self.dense.kd_rows(zs, zt, kd_weight, g_kd), torch.zeros_like(w))
        g.add_(g_kd)
        stats[1] += (kd * w).sum(dtype=torch.float64)
        if self.auto is not None:
            self.auto.add_stats(stats, ce, kd, w, *weights)

    def _ce_kd_at_t1(self, zs, zt, labels, w, g, teacher_label=None):
        """Plain forward KL at T = 1: CE, KD and the teacher's CE and entropy from one exp per
        model. Writes the gradient into `g`; returns [5, n] float64 rows (ce, kd, teacher_ce,
        teacher_entropy, top1_agreement; the last three 0 without metrics, teacher_ce kept under
        kd.auto) and kd.auto's per-row weights (None without), or None when a row is not finite
        (the general route takes it).

        Each model's logits are shifted by their maximum over the real columns: the KD and
        entropy sums never underflow, and a padding column far above that maximum overflows the
        CE sums (non-finite: general route) rather than losing precision silently."""
        shard = self.shard_kd
        nv = valid_width(shard)
        n, width = zs.shape
        padded = shard.padded  # padding on any rank: the CE's sums differ from the KD's
        maxes = torch.full((2, n), -math.inf, dtype=torch.float32, device=zs.device)
        if nv:
            maxes[0] = zs[:, :nv].amax(-1)
            maxes[1] = zt[:, :nv].amax(-1)
        maxes = all_reduce(maxes, dist.ReduceOp.MAX, shard.group)
        if not bool(torch.isfinite(maxes).all()):
            return None
        x, y, e_y, d = self.scratch.take(4, n, width, zs.device)
        torch.sub(zs, maxes[0].unsqueeze(-1), out=x)  # fp32 whatever the logits' dtype
        torch.sub(zt, maxes[1].unsqueeze(-1), out=y)
        xv, yv, eyv, dv = x[:, :nv], y[:, :nv], e_y[:, :nv], d[:, :nv]
        label = LabelColumns(labels, shard)
        # Row sums, all-reduced together: name -> per-row tensor.
        part = {"label_s": label.read(x).double(), "label_t": label.read(y).double()}
        if self.metrics:
            part["first_max"] = self._first_max_ids(xv, yv, dv)
        torch.exp(y, out=e_y)
        part["s_tv"] = row_sum(eyv)  # sum e^y over the real columns: the KD's and entropy's
        if padded:
            part["s_ta"] = row_sum(e_y)  # ... over every column: the teacher CE's
        if self.metrics:
            part["entropy_dot"] = row_sum(torch.mul(eyv, yv, out=dv))  # sum e^y·y
        part["cross"] = row_sum(torch.sub(yv, xv, out=dv).mul_(eyv))  # sum e^y·(y - x): the KL's
        x.exp_()
        part["s_sv"] = row_sum(xv)
        if padded:
            part["s_sa"] = row_sum(x)
        first_max = part.pop("first_max", None)
        sums = dict(zip(part, all_reduce(torch.stack(list(part.values())), dist.ReduceOp.SUM,
                                          shard.group)))
        s_tv, s_sv = sums["s_tv"], sums["s_sv"]
        s_ta, s_sa = sums.get("s_ta", s_tv), sums.get("s_sa", s_sv)
        ce = torch.log(s_sa) - sums["label_s"]
        kd = (sums["cross"] / s_tv + torch.log(s_sv) - torch.log(s_tv)).clamp(min=0.0)
        out = torch.zeros(5, n, dtype=torch.float64, device=zs.device)
        out[0], out[1] = ce, kd
        if self.metrics or self.auto is not None:
            out[2] = torch.log(s_ta) - sums["label_t"]
        if self.metrics:
            out[3] = torch.log(s_tv) - sums["entropy_dot"] / s_tv
            ids = all_reduce(first_max, dist.ReduceOp.MIN, shard.group)
            out[4] = (ids[0] == ids[1]).double()
        if not bool(torch.isfinite(out).all()):
            return None
        wd = w.double()
        ce_w, kd_w, weights = self.ce_weight, self.kd_weight, None
        if self.auto is not None:
            weights = self.auto.weights(ce, out[2] if teacher_label is None else -teacher_label.double())
            ce_w, kd_w = weights[2], weights[3]
        coef_s = (wd * (ce_w / s_sa + kd_w / s_sv)).float().unsqueeze(-1)
        coef_t = (-wd * kd_w / s_tv).float().unsqueeze(-1)
        torch.addcmul(xv.mul_(coef_s), eyv, coef_t, out=g[:, :nv])
        if nv < width:  # padding: the CE's softmax only
            torch.mul(x[:, nv:], (wd * ce_w / s_sa).float().unsqueeze(-1), out=g[:, nv:])
        label.subtract(g, w * ce_w if weights is None else wd * ce_w)
        return out, weights

    def total(self, stats: torch.Tensor) -> torch.Tensor:
        if self.auto is not None:
            return stats[len(STATS)].float()
        return super().total(stats)

    def _first_max_ids(self, xv, yv, tmp) -> torch.Tensor:
        """[2, n] global vocabulary id of each model's first (lowest-id) maximum on this rank,
        +inf where this rank has none; the caller all-reduces with MIN. `xv`, `yv` are logits
        shifted by their global maxima, so exactly 0 at every maximum: two elementwise passes
        (fp32 out: a bool mask is slower) and a max, 5x faster than torch.argmax on CPU."""
        nv = xv.shape[-1]
        if self._desc is None or self._desc.numel() != nv:
            # nv - j for column j: the lowest column with a maximum scores highest, none gives 0
            self._desc = torch.arange(nv, 0, -1, dtype=torch.float32, device=xv.device)
        ids = []
        for v in (xv, yv):
            score = torch.eq(v, 0, out=tmp).mul_(self._desc).amax(-1) if nv else \
                torch.zeros(v.shape[0], device=v.device)
            ids.append(torch.where(score > 0, self.shard_kd.start + nv - score.double(), math.inf))
        return torch.stack(ids)


class TeacherWithLabels:
    """Teacher logits `[n, V/TP]` with the teacher's stored log-probability of each label `[n]`,
    sliced together by rows: a top-K cache's rebuilt logits hold the label's log-probability
    only where the label is among the K, its rows hold it always (kd.auto's advantage reads it)."""

    def __init__(self, logits: torch.Tensor, label_logp: torch.Tensor):
        self.logits, self.label_logp = logits, label_logp

    def __getitem__(self, rows: slice) -> "TeacherWithLabels":
        return TeacherWithLabels(self.logits[rows], self.label_logp[rows])


def mixed_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  labels: torch.Tensor, loss_mask: torch.Tensor, opt: KDOptions = KDOptions(), *,
                  ce_weight: float, kd_weight: float, tp_group=None, chunk_size: int | None = None,
                  metrics: bool = True, overwrite_logits: bool = False,
                  scratch: ScratchPool | None = None,
                  auto: AutoAlpha | None = None,
                  teacher_label_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(mixed loss, {ce, kd, teacher_ce, teacher_entropy, top1_agreement: masked sums}) from
    vocab-sharded logits `[..., V/TP]` of both models, labels and loss_mask `[...]`.

    `opt`: the KD options (`opt.vocab_size`: the true vocabulary, columns at or past it are
    padding); `tp_group`: the group the vocabulary is split over (None: one process);
    `chunk_size`: tokens per chunk (bounds the fp32 temporaries; default `default_row_chunk`);
    `metrics`: compute the teacher metrics (else their sums are 0); `overwrite_logits`: write
    the gradient over `student_logits` (as megatron-core's CE writes its softmax over its
    input): no new logits-sized buffer, and the logits are gone after the call; `scratch`: the
    caller's reusable temporaries (KDObjective.scratch; None: fresh ones for this call);
    `auto`: kd.auto's weighting in place of ce_weight / kd_weight (the sums then also hold
    AUTO_STATS, the teacher's advantage among them, and the loss is their "weighted");
    `teacher_label_logp`: the teacher's log-probability of each label `[...]` where the teacher
    logits do not hold it exactly (rebuilt from a top-K cache): kd.auto's advantage reads it.
    """
    require_same_shape(student_logits, teacher_logits)
    if labels.numel() * student_logits.shape[-1] != student_logits.numel() or \
            loss_mask.numel() != labels.numel():
        raise ValueError(f"labels {tuple(labels.shape)} and loss_mask {tuple(loss_mask.shape)} "
                         f"must have one entry per token of the logits {tuple(student_logits.shape)}")
    width = student_logits.shape[-1]
    kernel = RowLoss(opt, float(ce_weight), float(kd_weight), width, tp_group, student_logits.device, metrics,
                     scratch, auto)
    teacher = teacher_logits.detach().reshape(-1, width)
    if teacher_label_logp is not None and auto is not None:
        if teacher_label_logp.numel() != labels.numel():
            raise ValueError(f"teacher_label_logp {tuple(teacher_label_logp.shape)} must have one entry per "
                             f"label {tuple(labels.shape)}")
        teacher = TeacherWithLabels(teacher, teacher_label_logp.reshape(-1).to(teacher.device))
    source = LogitRows(teacher, labels.reshape(-1),
                       loss_mask.reshape(-1).float(), tp_group, chunk_size, overwrite=overwrite_logits)
    total, stats = ChunkedLoss.apply(source, kernel, student_logits)
    return total, dict(zip(kernel.stats, stats.unbind(0)))
