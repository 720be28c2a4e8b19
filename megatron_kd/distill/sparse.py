"""The objective of a KD step from a top-K teacher cache, on the student's vocab-parallel logits:
(w_ce)·CE + (w_kd)·forward KL to the teacher's cached top-k' (k' <= K) tokens, renormalised or
with the "other" bucket, at T = 1. The same numbers as the online general route on the full
teacher (distill/losses.py: keep = the teacher's top-k'), without its top-k search (the cache
already holds the set, sorted, ties to the lowest id) and without teacher logits.

Per token, with p the student's softmax over the real columns and q the teacher's kept
probabilities (Q their sum):
- other bucket: KL = sum_k q_k (log q_k - log p_k) + q_o (log q_o - log s_o), with q_o the
  teacher's mass outside the kept set (exact from the cache) and s_o = 1 - sum_k p_k; the
  gradient is p - q on the kept columns and p (1 - q_o / s_o) on the other real columns;
- renormalised: KL to q / Q, gradient p - q / Q on the kept columns and p elsewhere.
CE follows megatron-core (softmax over every column, padding included). Each TP rank returns
the same per-token loss, and its backward gives exactly the gradient of its own shard; the
gradient is written over the logits (their last reader), as the online objective does.
`SparseKD` is the row kernel, run by losses.ChunkedLoss like every objective's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_kd.distill.auto_alpha import AUTO_STATS, AutoAlpha
from megatron_kd.distill.losses import ChunkedLoss, LogitRows, RowKernel, Scratch, other_bucket_kl
from megatron_kd.distill.vocab_parallel import LabelColumns, Shard, all_reduce, group_size, row_sum, valid_width


@dataclass
class _Columns:
    """Where a chunk's label and kept tokens sit on this rank's vocabulary shard. `kept_here`:
    the id is one of this rank's columns; `kept_col`: its column (clamped, so reads stay in bounds)."""

    label: LabelColumns
    kept_here: torch.Tensor  # [rows, k]
    kept_col: torch.Tensor
    kept_row: torch.Tensor  # the row of each kept entry, for index_put_

    @classmethod
    def of(cls, labels, ids, shard: Shard, width: int) -> "_Columns":
        row = torch.arange(labels.shape[0], device=labels.device)
        kept_col = (ids - shard.start).clamp(0, width - 1)
        return cls(LabelColumns(labels, shard), (ids >= shard.start) & (ids < shard.start + width),
                   kept_col, row.unsqueeze(-1).expand_as(kept_col))


def _read_logits(zc, cols: _Columns, whole: bool, group):
    """The label's logit and the kept columns' logits of every row (summed over the shards, so
    each rank holds all of them), read before the exponentials may overwrite the logits."""
    label_z = cols.label.read(zc).float()
    if whole:
        return label_z, zc.gather(1, cols.kept_col).float()
    kept_z = torch.where(cols.kept_here, zc.gather(1, cols.kept_col).float(),
                         torch.zeros_like(cols.kept_col, dtype=torch.float32))
    return all_reduce(label_z, dist.ReduceOp.SUM, group), all_reduce(kept_z, dist.ReduceOp.SUM, group)


def _student_mass(ex, cols: _Columns, padded: bool, whole: bool, group):
    """From ex = exp(z - max): (the softmax's normaliser over every column, the student's
    probability outside the kept set or None where padding needs it computed apart, the kept
    columns' exps). Without padding the kept columns are cleared (they are written whole later)
    and one pass sums the rest directly: 1 - sum p_k would cancel to nothing when the student is
    nearly certain of a kept token, and the normaliser is that sum plus the kept exps (positive
    terms, no cancellation)."""
    if padded:
        total = all_reduce(row_sum(ex), dist.ReduceOp.SUM, group)
        kept_ex = torch.where(cols.kept_here, ex.gather(1, cols.kept_col), torch.zeros_like(cols.kept_col,
                                                                                            dtype=ex.dtype))
        return total, None, kept_ex
    if whole:
        kept_ex = ex.gather(1, cols.kept_col)
        ex.scatter_(1, cols.kept_col, 0.0)
    else:
        kept_ex = torch.where(cols.kept_here, ex.gather(1, cols.kept_col), torch.zeros_like(cols.kept_col,
                                                                                            dtype=ex.dtype))
        ex.index_put_((cols.kept_row[cols.kept_here], cols.kept_col[cols.kept_here]),
                      torch.zeros((), dtype=ex.dtype, device=ex.device))
    rest = row_sum(ex)
    both = all_reduce(torch.stack([rest + kept_ex.sum(-1, dtype=torch.float64), rest]), dist.ReduceOp.SUM, group)
    return both[0], both[1] / both[0], kept_ex


def _real_columns(zc, cols: _Columns, n_valid: int, width: int, max_all, total, padded: bool, group):
    """The student's log-normaliser over the real columns (padding excluded); with padding also
    its probabilities there (from their own exp: padding logits may dwarf the real ones) and its
    mass outside the kept set."""
    if not padded:
        return max_all.double() + torch.log(total), None, None
    real = zc[:, :n_valid].float()
    max_real = all_reduce(real.amax(-1) if n_valid else torch.full_like(max_all, -math.inf), dist.ReduceOp.MAX,
                          group)
    lse_real = max_real.double() + torch.log(all_reduce(row_sum(torch.exp(real - max_real.unsqueeze(-1))),
                                                        dist.ReduceOp.SUM, group))
    p_real = torch.exp(zc[:, :n_valid].float() - lse_real.float().unsqueeze(-1))
    spare = torch.where(cols.kept_here, cols.kept_col, torch.full_like(cols.kept_col, width))  # width: a spare column
    kept = torch.zeros(zc.shape[0], width + 1, dtype=torch.bool, device=zc.device).scatter_(1, spare, True)
    other_mass = all_reduce(row_sum(torch.where(kept[:, :n_valid], torch.zeros_like(p_real), p_real)),
                            dist.ReduceOp.SUM, group)
    return lse_real, p_real, other_mass


def _kl_to_teacher(q_logp, other_logp, logp_kept, other_mass, other_bucket: bool):
    """Per row: (forward KL, the target probabilities at the kept columns, the factor of p on the
    real columns outside the kept set in the KD gradient)."""
    q = torch.exp(q_logp)
    if other_bucket:
        other, factor = other_bucket_kl(torch.exp(other_logp), other_mass)
        kl = (q * (q_logp - logp_kept)).sum(-1) + other
        return kl.clamp(min=0.0).float(), q, factor
    log_target = q_logp - torch.logsumexp(q_logp, dim=-1, keepdim=True)  # renormalised, no 0 x log 0
    target = torch.exp(log_target)
    kl = torch.where(target > 0, target * (log_target - logp_kept), torch.zeros_like(target)).sum(-1)
    return kl.clamp(min=0.0).float(), target, torch.ones_like(q_logp[:, 0])


@dataclass
class KeptRows:
    """The teacher's kept ids and log-probabilities `[n, k]` and the log of its mass outside them
    `[n]`, sliced by rows (what LogitRows hands the kernel for each chunk); under kd.auto also the
    teacher's log-probability of the label `[n]` (the cache's `label_logp`, exact whatever K)."""

    ids: torch.Tensor
    q_logp: torch.Tensor
    other_logp: torch.Tensor
    label_logp: torch.Tensor | None = None

    def __getitem__(self, rows: slice) -> "KeptRows":
        label = None if self.label_logp is None else self.label_logp[rows]
        return KeptRows(self.ids[rows], self.q_logp[rows], self.other_logp[rows], label)


class SparseKD(RowKernel):
    """The sparse row kernel (distill.losses.ChunkedLoss): CE and forward KL over the teacher's
    kept ids, renormalised or with the other bucket, of a chunk of student logits."""

    def __init__(self, ce_weight: float, kd_weight: float, other_bucket: bool, vocab_size: int, width: int,
                 group, device, auto: AutoAlpha | None = None):
        self.ce_weight, self.kd_weight, self.other_bucket, self.group = ce_weight, kd_weight, other_bucket, group
        self.auto = auto  # kd.auto: its α as per-row weights, and the teacher's advantage (auto_alpha.py)
        if auto is not None:
            self.stats = RowKernel.stats + AUTO_STATS
        self.shard = Shard(width, vocab_size, group, device)
        self.n_valid = valid_width(self.shard)
        # one rank holds the whole vocabulary (no TP): every label and kept id is a column here, so
        # the kept columns are read and written by index, without masks (boolean indexing costs a
        # nonzero() and a copy per use)
        self.whole = group_size(group) == 1
        self.scratch = Scratch()

    def in_place_rows(self, zs: torch.Tensor, grad: torch.Tensor | None) -> int | None:
        """All rows in one chunk where exp(z - max) can overwrite the logits (the gradient goes over
        them, fp32, no padding): the logits are then its only full-width buffer."""
        over = grad is not None and grad.data_ptr() == zs.data_ptr() and zs.dtype == torch.float32
        return zs.shape[0] if over and not self.shard.padded else None

    def total(self, stats: torch.Tensor) -> torch.Tensor:
        if self.auto is not None:
            return stats[2].float()
        return super().total(stats)

    def add(self, zc, kept: KeptRows, labels, w, g, stats) -> None:
        """The row-kernel interface: masked CE and KD sums into `stats`, their weighted gradient into
        `g` (fp32; it may be the logits `zc` themselves)."""
        shard, group, ce_w, kd_w = self.shard, self.group, self.ce_weight, self.kd_weight
        rows, width = zc.shape
        cols = _Columns.of(labels, kept.ids.long(), shard, width)
        max_all = all_reduce(zc.amax(-1).float(), dist.ReduceOp.MAX, group)
        label_z, kept_z = _read_logits(zc, cols, self.whole, group)
        # exp(z - max) is the only full-width temporary (fp32), turned into the gradient; over the
        # logits, their last reader, where nothing reads them again (no padding)
        over = g.data_ptr() == zc.data_ptr()
        ex = self.scratch.take(1, rows, width, zc.device)[0] if over and shard.padded else g
        torch.sub(zc, max_all.unsqueeze(-1), out=ex).exp_()
        total, other_mass, kept_ex = _student_mass(ex, cols, shard.padded, self.whole, group)
        ce = (torch.log(total) + max_all.double() - label_z.double()).float()  # megatron-core's CE
        weights = None
        if self.auto is not None:  # per-row tensors in place of the two weights
            weights = self.auto.weights(ce, -kept.label_logp.double())
            ce_w, kd_w = weights[2], weights[3]
        lse_real, p_real, padded_other = _real_columns(zc, cols, self.n_valid, width, max_all, total, shard.padded,
                                                       group)
        if shard.padded:
            other_mass = padded_other
        # the kept columns: their logits (all-reduced over the shards) give log p exactly
        logp_kept = kept_z.double() - lse_real.unsqueeze(-1)
        kl, target, rest = _kl_to_teacher(kept.q_logp.double(), kept.other_logp.double(), logp_kept, other_mass,
                                          self.other_bucket)
        # gradient = w * [ce_w (p_all - onehot) + kd_w (p_real * rest on the real columns outside
        # the kept set; p_real - target on the kept ones)], p_all = ex / total. The kept columns
        # are written whole (no large term added and taken away again).
        coef = w.double() / total
        if shard.padded:
            ex.mul_((coef * ce_w).float().unsqueeze(-1))
            ex[:, :self.n_valid].add_(p_real.mul_((kd_w * rest * w.double()).float().unsqueeze(-1)))
        else:
            ex.mul_((coef * (ce_w + kd_w * rest)).float().unsqueeze(-1))
        p_all_kept = kept_ex.double() * (1.0 / total).unsqueeze(-1)
        col = (lambda x: x.unsqueeze(-1)) if weights is not None else (lambda x: x)  # noqa: E731
        kept_grad = ((col(ce_w) * p_all_kept + col(kd_w) * (torch.exp(logp_kept) - target))
                     * w.double().unsqueeze(-1)).float()
        if self.whole:
            ex.scatter_(1, cols.kept_col, kept_grad)
        else:
            here = cols.kept_here
            ex.index_put_((cols.kept_row[here], cols.kept_col[here]), kept_grad[here])
        cols.label.subtract(ex, ce_w * w)
        if ex is not g:
            g.copy_(ex)
        stats[:2] += torch.stack([(ce * w).sum(dtype=torch.float64), (kl * w).sum(dtype=torch.float64)])
        if weights is not None:
            self.auto.add_stats(stats, ce, torch.where(w > 0, kl, torch.zeros_like(kl)), w, *weights)


def sparse_kd_loss(student_logits: torch.Tensor, ids: torch.Tensor, q_logp: torch.Tensor,
                   other_logp: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, *, top_k: int,
                   other_bucket: bool, ce_weight: float, kd_weight: float, vocab_size: int, tp_group=None,
                   chunk_size: int | None = None, label_logp: torch.Tensor | None = None,
                   auto: AutoAlpha | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(mixed loss, {ce, kd: masked sums}) from vocab-sharded student logits `[..., V/TP]` and a
    top-K cache's rows in the same token order (`ids`, `q_logp` `[..., K]`, `other_logp` `[...]`):
    forward KL to the teacher's top-`top_k` (<= K) tokens. The logits are overwritten with the
    gradient (they must not be read afterwards). `auto`: kd.auto's weighting, the teacher's
    advantage read from its `label_logp` `[...]` (the sums then also hold AUTO_STATS)."""
    width = student_logits.shape[-1]
    n = student_logits.numel() // width
    K = ids.shape[-1]
    if top_k > K:
        raise ValueError(f"kd top_k={top_k} is larger than the cache's K={K}")
    ids_f, q_f = ids.reshape(n, K), q_logp.reshape(n, K).float()
    other = other_logp.reshape(n).double()
    if top_k < K:  # the cached tokens past k' join the "other" mass
        tail = torch.logsumexp(q_f[:, top_k:].double(), dim=-1)
        other = torch.logaddexp(other, tail)
        ids_f, q_f = ids_f[:, :top_k], q_f[:, :top_k]
    if auto is not None and label_logp is None:
        raise ValueError("kd.auto needs the teacher's log-probability of each label (a cache's label_logp)")
    kernel = SparseKD(float(ce_weight), float(kd_weight), bool(other_bucket), int(vocab_size), width, tp_group,
                      student_logits.device, auto)
    label = None if auto is None else label_logp.reshape(n).float()
    source = LogitRows(KeptRows(ids_f.contiguous(), q_f.contiguous(), other.float(), label), labels.reshape(n),
                       loss_mask.reshape(n).float(), tp_group, chunk_size, overwrite=True)
    total, sums = ChunkedLoss.apply(source, kernel, student_logits)
    out = {"ce": sums[0].float(), "kd": sums[1].float()}
    if auto is not None:
        out.update(zip(AUTO_STATS, sums[2:].unbind(0)))
    return total, out
