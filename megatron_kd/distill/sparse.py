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

import torch
import torch.distributed as dist

from megatron_kd.distill.mixed import default_row_chunk
from megatron_kd.distill.vocab_parallel import Shard, all_reduce, group_size, row_sum, valid_width


class _SparseKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, ids, q_logp, other_logp, labels, mask, ce_w, kd_w, other_bucket, vocab_size,
                group, chunk):
        width = logits.shape[-1]
        z = logits.detach().reshape(-1, width)  # a view: the gradient is written over the logits
        n = z.shape[0]
        shard = Shard(width, vocab_size, group, z.device)
        nv = valid_width(shard)
        # one rank holds the whole vocabulary (no TP): every label and kept id is a column here, so
        # the kept columns are read and written by index, without masks (boolean indexing costs a
        # nonzero() and a copy per use)
        whole = group_size(group) == 1
        sums = torch.zeros(2, dtype=torch.float64, device=z.device)
        scratch = torch.empty(0, device=z.device)
        for s in range(0, n, chunk):
            e_ = min(n, s + chunk)
            rows = e_ - s
            # ex = exp(z - max): the only full-width temporary (fp32), turned into the gradient; for
            # fp32 logits without vocabulary padding it is the logits themselves (their last reader),
            # which saves the temporary and the final copy
            zc = z[s:e_]
            m_all = all_reduce(zc.amax(-1).float(), dist.ReduceOp.MAX, group)
            lab, w = labels[s:e_], mask[s:e_].float()
            r_idx = torch.arange(rows, device=z.device)
            inside = (lab >= shard.start) & (lab < shard.start + width)
            lpos = (lab - shard.start).clamp(0, width - 1)
            idc = ids[s:e_].long()
            kin = (idc >= shard.start) & (idc < shard.start + width)
            kpos = (idc - shard.start).clamp(0, width - 1)
            rr = r_idx.unsqueeze(-1).expand_as(kpos)
            # the few logits read later (the label's, the kept columns'), before ex may overwrite them
            if whole:
                z_lab, z_k = zc[r_idx, lpos].float(), zc.gather(1, kpos).float()
            else:
                z_lab = all_reduce(torch.where(inside, zc[r_idx, lpos].float(), torch.zeros_like(m_all)),
                                    dist.ReduceOp.SUM, group)
                z_k = torch.where(kin, zc.gather(1, kpos).float(), torch.zeros_like(idc, dtype=torch.float32))
                z_k = all_reduce(z_k, dist.ReduceOp.SUM, group)
            in_place = not shard.padded and zc.dtype == torch.float32
            if in_place:
                ex = zc.sub_(m_all.unsqueeze(-1)).exp_()
            else:
                if scratch.numel() < rows * width:
                    scratch = torch.empty(rows * width, device=z.device)
                ex = torch.sub(zc, m_all.unsqueeze(-1), out=scratch[:rows * width].view(rows, width)).exp_()
            if not shard.padded:
                # the kept columns' exps, then the columns cleared (they are written whole below): one
                # pass sums the rest, the student's mass outside the kept set, directly (1 - sum p_k
                # cancels to nothing when the student is nearly certain of a kept token), and the
                # total is that plus the kept exps (positive terms, no cancellation)
                if whole:
                    e_k = ex.gather(1, kpos)
                    ex.scatter_(1, kpos, 0.0)
                else:
                    e_k = torch.where(kin, ex.gather(1, kpos), torch.zeros_like(kpos, dtype=ex.dtype))
                    ex.index_put_((rr[kin], kpos[kin]), torch.zeros((), dtype=ex.dtype, device=ex.device))
                rest_sum = row_sum(ex)
                both = all_reduce(torch.stack([rest_sum + e_k.sum(-1, dtype=torch.float64), rest_sum]),
                                   dist.ReduceOp.SUM, group)
                s_all, s_o = both[0], both[1] / both[0]
            else:
                s_all = all_reduce(row_sum(ex), dist.ReduceOp.SUM, group)
                e_k = torch.where(kin, ex.gather(1, kpos), torch.zeros_like(kpos, dtype=ex.dtype))
            ce = (torch.log(s_all) + m_all.double() - z_lab.double()).float()  # megatron-core's CE
            # the student's log-normaliser over the real columns (padding excluded)
            if shard.padded:
                zr = zc[:, :nv].float()
                m_r = all_reduce(zr.amax(-1) if nv else torch.full_like(m_all, -math.inf), dist.ReduceOp.MAX,
                                  group)
                s_r = all_reduce(row_sum(torch.exp(zr - m_r.unsqueeze(-1))), dist.ReduceOp.SUM, group)
                lse_r = m_r.double() + torch.log(s_r)
            else:
                lse_r = m_all.double() + torch.log(s_all)
            # the kept columns: their logits (all-reduced over the shards) give log p exactly
            logp_k = z_k.double() - lse_r.unsqueeze(-1)
            p_k = torch.exp(logp_k)
            q_lp = q_logp[s:e_].double()
            q = torch.exp(q_lp)
            p_all_k = e_k.double() * (1.0 / s_all).unsqueeze(-1)  # p_all at the kept columns
            if shard.padded:  # p_real from its own exp: padding logits may dwarf the real ones
                p_r = torch.exp(zc[:, :nv].float() - lse_r.float().unsqueeze(-1))
                kept = torch.zeros(rows, width + 1, dtype=torch.bool, device=z.device)
                kept = kept.scatter_(1, torch.where(kin, kpos, torch.full_like(kpos, width)), True)[:, :nv]
                s_o = all_reduce(row_sum(torch.where(kept, torch.zeros_like(p_r), p_r)), dist.ReduceOp.SUM, group)
            else:
                p_r = None
            if other_bucket:
                q_o = torch.exp(other_logp[s:e_].double())
                s_o = s_o.clamp(min=1e-300)
                kl = (q * (q_lp - logp_k)).sum(-1)
                kl = kl + torch.where(q_o > 0, q_o * (torch.log(q_o.clamp(min=1e-300)) - torch.log(s_o)),
                                      torch.zeros_like(q_o))
                target, rest = q, 1.0 - q_o / s_o
            else:
                log_t = q_lp - torch.logsumexp(q_lp, dim=-1, keepdim=True)  # renormalised, no 0 x log 0
                target = torch.exp(log_t)
                kl = torch.where(target > 0, target * (log_t - logp_k), torch.zeros_like(target)).sum(-1)
                rest = torch.ones_like(lse_r)
            kl = kl.clamp(min=0.0).float()
            # gradient = w * [ce_w (p_all - onehot) + kd_w (p_real * rest on the real columns outside
            # the kept set; p_real - target on the kept ones)], p_all = ex / s_all. The kept columns
            # are written whole (no large term added and taken away again).
            coef = (w.double() / s_all)  # per row
            if shard.padded:
                ex.mul_((coef * ce_w).float().unsqueeze(-1))
                ex[:, :nv].add_(p_r.mul_((kd_w * rest * w.double()).float().unsqueeze(-1)))
            else:
                ex.mul_((coef * (ce_w + kd_w * rest)).float().unsqueeze(-1))
            g = ex
            wk = w.double().unsqueeze(-1)
            kept_g = (ce_w * p_all_k + kd_w * (p_k - target)) * wk
            if whole:
                g.scatter_(1, kpos, kept_g.float())
            else:
                g.index_put_((rr[kin], kpos[kin]), kept_g.float()[kin])
            lab_fix = torch.where(inside, -ce_w * w, torch.zeros_like(w))  # the label's one-hot
            g.index_put_((r_idx, lpos), lab_fix, accumulate=True)
            if not in_place:
                z[s:e_] = g.to(z.dtype)
            sums += torch.stack([(ce * w).sum(dtype=torch.float64), (kl * w).sum(dtype=torch.float64)])
        total = (ce_w * sums[0] + kd_w * sums[1]).float()
        ctx.save_for_backward(z)
        ctx.shape = logits.shape
        out = sums.float()
        ctx.mark_non_differentiable(out)
        return total, out

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
    if chunk_size is None and student_logits.dtype == torch.float32 and vocab_size >= width * tp:
        # exponentiated in place (no full-width temporary): chunks would only bound the [rows, K]
        # arrays, and each costs ~50 small calls; one chunk measured 1.3-1.5x faster than 2^20-element
        # ones at V = 2048 and 8192 (1024 rows, CPU)
        chunk = n
    else:
        chunk = chunk_size or default_row_chunk(width, student_logits.device, tp)
    total, sums = _SparseKD.apply(student_logits, ids_f.contiguous(), q_f.contiguous(), other.float(),
                                  labels.reshape(n), loss_mask.reshape(n), float(ce_weight), float(kd_weight),
                                  bool(other_bucket), int(vocab_size), tp_group, max(1, int(chunk)))
    return total, {"ce": sums[0], "kd": sums[1]}
