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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_kd.distill.losses import default_row_chunk, other_bucket_kl
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


class _SparseKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, ids, q_logp, other_logp, labels, mask, ce_w, kd_w, other_bucket, vocab_size,
                group, chunk):
        width = logits.shape[-1]
        z = logits.detach().reshape(-1, width)  # a view: the gradient is written over the logits
        n = z.shape[0]
        shard = Shard(width, vocab_size, group, z.device)
        n_valid = valid_width(shard)
        # one rank holds the whole vocabulary (no TP): every label and kept id is a column here, so
        # the kept columns are read and written by index, without masks (boolean indexing costs a
        # nonzero() and a copy per use)
        whole = group_size(group) == 1
        # exp(z - max) is the only full-width temporary (fp32), turned into the gradient; for fp32
        # logits without vocabulary padding it is the logits themselves (their last reader), which
        # saves the temporary and the final copy
        in_place = not shard.padded and z.dtype == torch.float32
        sums = torch.zeros(2, dtype=torch.float64, device=z.device)
        scratch = torch.empty(0, device=z.device)
        for begin in range(0, n, chunk):
            end = min(n, begin + chunk)
            rows = end - begin
            zc = z[begin:end]
            w = mask[begin:end].float()
            cols = _Columns.of(labels[begin:end], ids[begin:end].long(), shard, width)
            max_all = all_reduce(zc.amax(-1).float(), dist.ReduceOp.MAX, group)
            label_z, kept_z = _read_logits(zc, cols, whole, group)
            if in_place:
                ex = zc.sub_(max_all.unsqueeze(-1)).exp_()
            else:
                if scratch.numel() < rows * width:
                    scratch = torch.empty(rows * width, device=z.device)
                ex = torch.sub(zc, max_all.unsqueeze(-1), out=scratch[:rows * width].view(rows, width)).exp_()
            total, other_mass, kept_ex = _student_mass(ex, cols, shard.padded, whole, group)
            ce = (torch.log(total) + max_all.double() - label_z.double()).float()  # megatron-core's CE
            lse_real, p_real, padded_other = _real_columns(zc, cols, n_valid, width, max_all, total, shard.padded,
                                                           group)
            if shard.padded:
                other_mass = padded_other
            # the kept columns: their logits (all-reduced over the shards) give log p exactly
            logp_kept = kept_z.double() - lse_real.unsqueeze(-1)
            kl, target, rest = _kl_to_teacher(q_logp[begin:end].double(), other_logp[begin:end].double(),
                                              logp_kept, other_mass, other_bucket)
            # gradient = w * [ce_w (p_all - onehot) + kd_w (p_real * rest on the real columns outside
            # the kept set; p_real - target on the kept ones)], p_all = ex / total. The kept columns
            # are written whole (no large term added and taken away again).
            coef = w.double() / total
            if shard.padded:
                ex.mul_((coef * ce_w).float().unsqueeze(-1))
                ex[:, :n_valid].add_(p_real.mul_((kd_w * rest * w.double()).float().unsqueeze(-1)))
            else:
                ex.mul_((coef * (ce_w + kd_w * rest)).float().unsqueeze(-1))
            p_all_kept = kept_ex.double() * (1.0 / total).unsqueeze(-1)
            kept_grad = (ce_w * p_all_kept + kd_w * (torch.exp(logp_kept) - target)) * w.double().unsqueeze(-1)
            kept_grad = kept_grad.float()
            if whole:
                ex.scatter_(1, cols.kept_col, kept_grad)
            else:
                here = cols.kept_here
                ex.index_put_((cols.kept_row[here], cols.kept_col[here]), kept_grad[here])
            cols.label.subtract(ex, ce_w * w)
            if not in_place:
                z[begin:end] = ex.to(z.dtype)
            sums += torch.stack([(ce * w).sum(dtype=torch.float64), (kl * w).sum(dtype=torch.float64)])
        loss = (ce_w * sums[0] + kd_w * sums[1]).float()
        ctx.save_for_backward(z)
        ctx.shape = logits.shape
        out = sums.float()
        ctx.mark_non_differentiable(out)
        return loss, out

    @staticmethod
    def backward(ctx, grad_total, grad_sums):
        (grad,) = ctx.saved_tensors
        return (grad.mul_(grad_total.to(grad.dtype)).reshape(ctx.shape),) + (None,) * 11


def sparse_kd_loss(student_logits: torch.Tensor, ids: torch.Tensor, q_logp: torch.Tensor,
                   other_logp: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, *, top_k: int,
                   other_bucket: bool, ce_weight: float, kd_weight: float, vocab_size: int, tp_group=None,
                   chunk_size: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(mixed loss, {ce, kd: masked sums}) from vocab-sharded student logits `[..., V/TP]` and a
    top-K cache's rows in the same token order (`ids`, `q_logp` `[..., K]`, `other_logp` `[...]`):
    forward KL to the teacher's top-`top_k` (<= K) tokens. The logits are overwritten with the
    gradient (they must not be read afterwards)."""
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
    tp = group_size(tp_group)
    # exponentiated in place (fp32 logits, no padding): the logits are the only full-width buffer
    in_place = student_logits.dtype == torch.float32 and vocab_size >= width * tp
    chunk = chunk_size or default_row_chunk(width, student_logits.device, tp, in_place_rows=n if in_place else None)
    total, sums = _SparseKD.apply(student_logits, ids_f.contiguous(), q_f.contiguous(), other.float(),
                                  labels.reshape(n), loss_mask.reshape(n), float(ce_weight), float(kd_weight),
                                  bool(other_bucket), int(vocab_size), tp_group, max(1, int(chunk)))
    return total, {"ce": sums[0], "kd": sums[1]}
