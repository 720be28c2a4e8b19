"""Fused output layer + CE + KD: logits are made chunk by chunk and never held whole.

`fused_output_kd(h_s, w_s, h_t, w_t, labels, loss_mask, ...)` takes the final hidden states of
student and teacher (`[N, H]`, already gathered over the sequence) and their vocab-parallel
output weights (`[V/TP, H]`). For each chunk of tokens it computes both logits, the student's
cross entropy and the KD loss, and their gradients w.r.t. the student's hidden states and
output weight, then drops the chunk's logits. Peak memory is a chunk of logits, not
`[N, V/TP]`, whatever the sequence length.

It returns the mixed loss `ce_weight·Σ mask·CE + kd_weight·Σ mask·KD` (a scalar: the gradients
are computed in the forward pass, so the backward only scales them by the incoming scalar) and
the per-step sums the unfused path reports. The same conventions as the unfused path hold:
CE is megatron-core's (softmax over every column, padding included), KD is `kd_loss`'s (padding
excluded), teacher metrics are the unfused objective's. Under TP the caller passes hidden states
through `copy_to_tensor_model_parallel_region` / the sequence-parallel gather, whose backward sums
the partial input gradients of the vocabulary shards.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megatron_kd.distill.losses import (KDOptions, Scratch, _all_reduce, _argmax_ids,
                                        _chunk_loss_and_grad, _forward_kl_fast, _group_size,
                                        _row_sum, _Shard, _valid_width, default_chunk_size,
                                        shift_exp_label, teacher_metrics)

STATS = ("ce", "kd", "teacher_ce", "teacher_entropy", "top1_agreement")


def default_gemm_chunk(local_vocab: int, device: torch.device | str = "cpu") -> int:
    """Tokens per output-layer chunk: the logits of one chunk are [chunk, V/TP] per model, so
    memory stays flat in the sequence length, while the chunk is tall enough for efficient
    GEMMs (output layer, hidden-state and weight gradients). CPU: ~32 MiB of fp32 logits (256
    tokens at V/TP = 32768: faster than the unfused path there, docs/PERFORMANCE.md), at least 64
    tokens; GPU: ~64 MiB, at least 256."""
    budget, floor = ((1 << 24), 256) if torch.device(device).type == "cuda" else ((1 << 23), 64)
    return max(floor, budget // max(1, local_vocab))


def _vocab_parallel_ce(z: torch.Tensor, labels: torch.Tensor, shard: _Shard, out: torch.Tensor):
    """Per-row CE [n] (softmax over every local column) with d CE / d z written into `out`."""
    _, e, label_logit, local, mine = shift_exp_label(z, labels, shard)
    sums = _all_reduce(torch.stack([_row_sum(e), label_logit.double()]), dist.ReduceOp.SUM,
                       shard.group)
    torch.mul(e, (1.0 / sums[0]).float().unsqueeze(-1), out=out)
    rows = mine.nonzero().squeeze(-1)
    out[rows, local[rows]] -= 1.0
    return (torch.log(sums[0]) - sums[1]).float()


class _FusedOutputKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, labels, mask, ce_weight, kd_weight, opt: KDOptions,
                group, chunk_size, gemm_chunk_size, metrics):
        n = h_s.shape[0]
        width = w_s.shape[0]
        shard_kd = _Shard(width, opt.vocab_size, group, h_s.device)  # padding excluded (KD)
        shard_all = _Shard(width, None, group, h_s.device)  # megatron's CE: every column
        need_grad = h_s.requires_grad or w_s.requires_grad
        grad_h = torch.zeros_like(h_s) if need_grad else None
        grad_w = torch.zeros(w_s.shape, dtype=torch.float32, device=w_s.device) if need_grad else None
        stats = torch.zeros(len(STATS), dtype=torch.float64, device=h_s.device)
        m = mask.reshape(-1).float()
        # Two levels: tall chunks for the matmuls, short sub-chunks (cache-sized temporaries on
        # CPU) for the softmax arithmetic. `chunk_size` (kd.chunk_size) sets the sub-chunk.
        sub = chunk_size or default_chunk_size(width, h_s.device, _group_size(group))
        step = max(sub, gemm_chunk_size or default_gemm_chunk(width, h_s.device))
        fast = opt.kind == "forward_kl" and opt.top_k is None and opt.top_p is None
        scratch = (Scratch(), Scratch())  # the fast path's temporaries; its gradient
        chunk_grad = Scratch()  # d loss / d logits of one output-layer chunk, reused
        h_t, w_sd, w_td = h_t.detach(), w_s.detach(), w_t.detach()
        for s in range(0, n, step):
            e = min(n, s + step)
            hs = h_s[s:e].detach()
            zs = hs @ w_sd.t()  # [chunk, V/TP] in the model's dtype, as the output layer
            zt = h_t[s:e] @ w_td.t()
            g = chunk_grad.take(1, zs.shape[0], zs.shape[1], zs.device)[0]
            for i in range(0, e - s, sub):
                j = min(e - s, i + sub)
                _loss_rows(zs[i:j], zt[i:j], labels[s + i:s + j], m[s + i:s + j], g[i:j], stats,
                           ce_weight, kd_weight, opt, shard_kd, shard_all, fast, metrics, scratch)
            del zt
            if need_grad:
                grad_h[s:e] = (g.to(h_s.dtype) @ w_sd).to(grad_h.dtype)
                grad_w.addmm_(g.t(), hs.float())
        ctx.save_for_backward(grad_h, grad_w)
        ctx.w_dtype = w_s.dtype
        ctx.mark_non_differentiable(stats)
        total = (ce_weight * stats[0] + kd_weight * stats[1]).float()
        return total, stats

    @staticmethod
    def backward(ctx, grad_total, _grad_stats):
        grad_h, grad_w = ctx.saved_tensors
        if grad_h is None:
            return (None,) * 13
        g = grad_total.float()
        return (grad_h.mul_(g.to(grad_h.dtype)), grad_w.mul_(g).to(ctx.w_dtype)) + (None,) * 11


def _ce_kd_at_t1(zs, zt, labels, w, g, ce_weight, kd_weight, shard, scratch, metrics):
    """The hot loop of plain forward KL at T = 1: CE, KD and the teacher's CE and entropy from
    one exp per model (CE and KD share the student's exponentials, teacher CE and entropy the
    teacher's). Writes the mixed loss's gradient (fp32) into `g`; returns [4, n] float64 rows
    (ce, kd, teacher_ce, teacher_entropy), or None when a row is not finite, which sends the
    sub-chunk to the general route.

    Each model's logits are shifted by their maximum over the real columns: the KD and entropy
    sums never underflow, and a padding column far above that maximum overflows the CE sums
    (non-finite: general route) rather than losing precision silently."""
    nv = _valid_width(shard)
    n, width = zs.shape
    maxes = torch.full((2, n), -math.inf, dtype=torch.float32, device=zs.device)
    if nv:
        maxes[0] = zs[:, :nv].amax(-1)
        maxes[1] = zt[:, :nv].amax(-1)
    maxes = _all_reduce(maxes, dist.ReduceOp.MAX, shard.group)
    if not bool(torch.isfinite(maxes).all()):
        return None
    x, y, e_y, d = scratch.take(4, n, width, zs.device)
    torch.sub(zs, maxes[0].unsqueeze(-1), out=x)  # fp32 whatever the logits' dtype
    torch.sub(zt, maxes[1].unsqueeze(-1), out=y)
    local = labels - shard.start
    mine = (local >= 0) & (local < width)
    at = local.clamp(0, width - 1).unsqueeze(-1)
    zero = torch.zeros(n, dtype=torch.float32, device=zs.device)
    torch.exp(y, out=e_y)
    xv, yv, eyv, dv = x[:, :nv], y[:, :nv], e_y[:, :nv], d[:, :nv]
    rows = [torch.where(mine, x.gather(-1, at).squeeze(-1), zero).double(),
            torch.where(mine, y.gather(-1, at).squeeze(-1), zero).double(),
            _row_sum(e_y), _row_sum(eyv)]
    if metrics:
        rows.append(_row_sum(torch.mul(eyv, yv, out=dv)))  # sum e^y·y: the entropy's
    rows.append(_row_sum(torch.sub(yv, xv, out=dv).mul_(eyv)))  # sum e^y·(y - x): the KL's
    x.exp_()
    rows += [_row_sum(x), _row_sum(xv)]
    sums = _all_reduce(torch.stack(rows), dist.ReduceOp.SUM, shard.group)
    label_s, label_t, s_ta, s_tv = sums[0], sums[1], sums[2], sums[3]
    s_sa, s_sv, cross = sums[-2], sums[-1], sums[-3]
    ce = torch.log(s_sa) - label_s
    kd = (cross / s_tv + torch.log(s_sv) - torch.log(s_tv)).clamp(min=0.0)
    teacher_ce = torch.log(s_ta) - label_t
    entropy = torch.log(s_tv) - sums[4] / s_tv if metrics else torch.zeros_like(ce)
    out = torch.stack([ce, kd, teacher_ce, entropy])
    if not bool(torch.isfinite(out).all()):
        return None
    wd = w.double()
    coef_ce = (wd * ce_weight / s_sa).float().unsqueeze(-1)
    coef_s = (wd * (ce_weight / s_sa + kd_weight / s_sv)).float().unsqueeze(-1)
    coef_t = (-wd * kd_weight / s_tv).float().unsqueeze(-1)
    torch.addcmul(xv.mul_(coef_s), eyv, coef_t, out=g[:, :nv])
    torch.mul(x[:, nv:], coef_ce, out=g[:, nv:])  # padding: the CE's softmax only
    hit = mine.nonzero().squeeze(-1)
    g[hit, local[hit]] -= (w[hit] * ce_weight).to(g.dtype)
    return out


def _loss_rows(zs, zt, labels, w, g, stats, ce_weight, kd_weight, opt, shard_kd, shard_all, fast,
               metrics, scratch) -> None:
    """CE, KD and teacher metrics of a few rows: masked sums into `stats`, the mixed loss's
    gradient w.r.t. the student logits into `g` (fp32)."""
    if fast and opt.temperature == 1.0:
        rows = _ce_kd_at_t1(zs, zt, labels, w, g, ce_weight, kd_weight, shard_kd, scratch[0], metrics)
        if rows is not None:
            wd = w.double()
            stats[0] += (rows[0] * wd).sum()
            stats[1] += torch.where(w > 0, rows[1] * wd, torch.zeros_like(wd)).sum()
            if metrics:
                nv = _valid_width(shard_kd)
                agree = _argmax_ids(zs[:, :nv], shard_kd) == _argmax_ids(zt[:, :nv], shard_kd)
                stats[2:] += torch.stack([rows[2], rows[3], agree.double()]).mul_(wd).sum(-1)
            return
    if metrics:
        per_tok = teacher_metrics(zs, zt, labels, shard_kd)
        stats[2:] += (per_tok.double() * w.double()).sum(-1)
    ce = _vocab_parallel_ce(zs, labels, shard_all, g)
    stats[0] += (ce * w).sum(dtype=torch.float64)
    g.mul_((w * ce_weight).unsqueeze(-1))
    kd = None
    if fast:
        g_kd = scratch[1].take(1, g.shape[0], g.shape[1], g.device)[0]
        kd = _forward_kl_fast(zs, zt, opt, shard_kd, g_kd, w * kd_weight, scratch[0])
        if kd is not None:
            g.add_(g_kd)
    if kd is None:
        kd, g_kd = _chunk_loss_and_grad(zs, zt, opt, shard_kd)
        g.add_(torch.where(w.unsqueeze(-1) > 0, g_kd * (w * kd_weight).unsqueeze(-1),
                           torch.zeros_like(g_kd)))
    stats[1] += torch.where(w > 0, kd * w, torch.zeros_like(kd)).sum(dtype=torch.float64)


def fused_output_kd(h_s: torch.Tensor, w_s: torch.Tensor, h_t: torch.Tensor, w_t: torch.Tensor,
                    labels: torch.Tensor, loss_mask: torch.Tensor, *, ce_weight: float,
                    kd_weight: float, kind: str = "forward_kl", temperature: float = 1.0,
                    t2_scale: bool = True, top_k: int | None = None, top_p: float | None = None,
                    other_bucket: bool = False, jsd_beta: float = 0.5,
                    vocab_size: int | None = None, tp_group=None, chunk_size: int | None = None,
                    gemm_chunk_size: int | None = None,
                    metrics: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(mixed loss, {ce, kd, teacher_ce, teacher_entropy, top1_agreement: masked sums}).

    h_s `[N, H_s]`, w_s `[V/TP, H_s]`, h_t `[N, H_t]`, w_t `[V/TP, H_t]`, labels and loss_mask `[N]`.
    `gemm_chunk_size`: tokens per output-layer chunk (default: default_gemm_chunk);
    `chunk_size`: tokens per softmax sub-chunk (default: losses.default_chunk_size).
    """
    opt = KDOptions(kind, temperature, t2_scale, top_k, top_p, other_bucket, jsd_beta, vocab_size)
    opt.check()
    if w_s.shape[0] != w_t.shape[0]:
        raise ValueError(f"student and teacher output layers have {w_s.shape[0]} and {w_t.shape[0]} "
                         "vocabulary rows per rank; align the padded vocabularies first")
    if h_s.shape[0] != h_t.shape[0] or h_s.shape[0] != labels.numel():
        raise ValueError(f"token counts differ: student {h_s.shape[0]}, teacher {h_t.shape[0]}, "
                         f"labels {labels.numel()}")
    total, stats = _FusedOutputKD.apply(h_s, w_s, h_t, w_t, labels.reshape(-1), loss_mask, float(ce_weight),
                                        float(kd_weight), opt, tp_group, chunk_size,
                                        gemm_chunk_size, metrics)
    return total, dict(zip(STATS, stats.unbind(0)))
