"""Fused output layer + CE + KD: logits are made chunk by chunk and never held whole.

`fused_output_kd(h_s, w_s, h_t, w_t, labels, loss_mask, ...)` takes the final hidden states of
student and teacher (`[N, H]`, already gathered over the sequence) and their vocab-parallel
output weights (`[V/TP, H]`). For each chunk of tokens it computes both logits, the student's
cross entropy and the KD loss, and their gradients w.r.t. the student's hidden states and
output weight, then drops the chunk's logits. Peak memory is a chunk of logits, not
`[N, V/TP]`, whatever the sequence length.

It returns the mixed loss `ce_weight·Σ mask·CE + kd_weight·Σ mask·KD` (a scalar: the gradients
are computed in the forward pass, so the backward only scales them by the incoming scalar) and
the per-step sums the unfused path reports: each chunk's CE, KD and teacher metrics are
mixed.py's `RowLoss`, the same row kernel `mixed_kd_loss` runs on whole logits, under the same
autograd.Function (losses.ChunkedLoss, fed by `HiddenRows` instead of logits). Under TP the
caller passes hidden states through `copy_to_tensor_model_parallel_region` / the
sequence-parallel gather, whose backward sums the partial input gradients of the vocabulary
shards.
"""

from __future__ import annotations

import torch

from megatron_kd.distill.auto_alpha import AutoAlpha
from megatron_kd.distill.losses import ChunkedLoss, ScratchPool, default_row_chunk
from megatron_kd.distill.mixed import RowLoss
from megatron_kd.distill.options import KDOptions
from megatron_kd.distill.vocab_parallel import group_size


def default_gemm_chunk(local_vocab: int, device: torch.device | str = "cpu") -> int:
    """Tokens per output-layer chunk: the logits of one chunk are [chunk, V/TP] per model, so
    memory stays flat in the sequence length, while the chunk is tall enough for efficient
    GEMMs (output layer, hidden-state and weight gradients). CPU: ~32 MiB of fp32 logits (256
    tokens at V/TP = 32768: faster than the unfused path there, docs/PERFORMANCE.md), at least 64
    tokens; GPU: ~64 MiB, at least 256."""
    budget, floor = ((1 << 24), 256) if torch.device(device).type == "cuda" else ((1 << 23), 64)
    return max(floor, budget // max(1, local_vocab))


class HiddenRows:
    """Hidden states and output weights as the input of ChunkedLoss (distill/losses.py): tall
    chunks of tokens for the matmuls, each made into both models' logits, and short sub-chunks
    (cache-sized temporaries on CPU) for the row kernel; each chunk's gradient w.r.t. its logits
    becomes the gradients of the student's hidden states and output weight, and is dropped."""

    def __init__(self, h_t, w_t, labels, weight, group, chunk_size, gemm_chunk_size, scratch: ScratchPool):
        self.h_t, self.w_t, self.labels, self.weight = h_t.detach(), w_t.detach(), labels, weight
        self.group, self.chunk_size, self.gemm_chunk_size, self.scratch = group, chunk_size, gemm_chunk_size, scratch

    def run(self, kernel, stats, inputs) -> tuple[None, tuple]:
        h_s, w_s = inputs
        n, width = h_s.shape[0], w_s.shape[0]
        need_grad = h_s.requires_grad or w_s.requires_grad
        grad_h = torch.zeros_like(h_s) if need_grad else None
        grad_w = torch.zeros(w_s.shape, dtype=torch.float32, device=w_s.device) if need_grad else None
        # `chunk_size` (kd.chunk_size) sets the sub-chunk
        sub = self.chunk_size or default_row_chunk(width, h_s.device, group_size(self.group))
        step = max(sub, self.gemm_chunk_size or default_gemm_chunk(width, h_s.device))
        chunk_grad = self.scratch.get("fused_chunk_grad", h_s.device)  # d loss / d logits of a chunk
        w_sd = w_s.detach()
        for s in range(0, n, step):
            e = min(n, s + step)
            hs = h_s[s:e].detach()
            zs = hs @ w_sd.t()  # [chunk, V/TP] in the model's dtype, as the output layer
            zt = self.h_t[s:e] @ self.w_t.t()
            g = chunk_grad.take(1, zs.shape[0], zs.shape[1], zs.device)[0]
            for i in range(0, e - s, sub):
                j = min(e - s, i + sub)
                kernel.add(zs[i:j], zt[i:j], self.labels[s + i:s + j], self.weight[s + i:s + j], g[i:j], stats)
            del zt
            if need_grad:
                grad_h[s:e] = (g.to(h_s.dtype) @ w_sd).to(grad_h.dtype)
                grad_w.addmm_(g.t(), hs.float())
        return None, (grad_h, grad_w)


def fused_output_kd(h_s: torch.Tensor, w_s: torch.Tensor, h_t: torch.Tensor, w_t: torch.Tensor,
                    labels: torch.Tensor, loss_mask: torch.Tensor, opt: KDOptions = KDOptions(), *,
                    ce_weight: float, kd_weight: float, tp_group=None, chunk_size: int | None = None,
                    gemm_chunk_size: int | None = None,
                    metrics: bool = True,
                    scratch: ScratchPool | None = None,
                    auto: AutoAlpha | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(mixed loss, {ce, kd, teacher_ce, teacher_entropy, top1_agreement: masked sums}).

    h_s `[N, H_s]`, w_s `[V/TP, H_s]`, h_t `[N, H_t]`, w_t `[V/TP, H_t]`, labels and loss_mask `[N]`;
    `opt`: the KD options. `gemm_chunk_size`: tokens per output-layer chunk (default:
    default_gemm_chunk); `chunk_size`: tokens per softmax sub-chunk (default: losses.default_row_chunk);
    `scratch`: the caller's reusable temporaries (KDObjective.scratch; None: fresh ones); `auto`:
    kd.auto's weighting (mixed_kd_loss).
    """
    if w_s.shape[0] != w_t.shape[0]:
        raise ValueError(f"student and teacher output layers have {w_s.shape[0]} and {w_t.shape[0]} "
                         "vocabulary rows per rank; align the padded vocabularies first")
    if h_s.shape[0] != h_t.shape[0] or h_s.shape[0] != labels.numel():
        raise ValueError(f"token counts differ: student {h_s.shape[0]}, teacher {h_t.shape[0]}, "
                         f"labels {labels.numel()}")
    scratch = scratch or ScratchPool()
    kernel = RowLoss(opt, float(ce_weight), float(kd_weight), w_s.shape[0], tp_group, h_s.device, metrics, scratch,
                     auto)
    source = HiddenRows(h_t, w_t, labels.reshape(-1), loss_mask.reshape(-1).float(), tp_group, chunk_size,
                        gemm_chunk_size, scratch)
    total, stats = ChunkedLoss.apply(source, kernel, h_s, w_s)
    return total, dict(zip(kernel.stats, stats.unbind(0)))
