"""The one-pass mixed objective, on logits (mixed_kd_loss) and fused with the output layer
(fused_output_kd), against a float64 reference and against the separate-pass path (megatron-core's
CE + kd_loss), at TP=1 and TP=2: loss, CE/KD/teacher-metric sums and gradients."""

from __future__ import annotations

import zlib

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tests.workers.kd_losses import reference

N, HS, HT, VPAD, VOCAB = 26, 24, 40, 64, 59  # 5 padded columns; 32 per rank at TP=2

CASES = {
    "fkl": ({"kind": "forward_kl"}, 0.5),
    # several output-layer chunks (10 tokens, the last one short), each in sub-chunks of 7
    "fkl_T2_chunk7": ({"kind": "forward_kl", "temperature": 2.0, "chunk_size": 7,
                       "gemm_chunk_size": 10}, 0.6),
    "topk": ({"kind": "forward_kl", "top_k": 5}, 0.8),
    "rkl": ({"kind": "reverse_kl"}, 0.4),
    "jsd_keep_ce": ({"kind": "jsd", "jsd_beta": 0.3}, 1.0),
    "huge_hidden": ({"kind": "forward_kl"}, 0.5),
    # the student's padding columns far above its real ones: the one-exp route overflows and
    # hands the rows to the general one
    "huge_padding": ({"kind": "forward_kl"}, 0.5),
    # small integer logits: many tied maxima (top-1 agreement takes the lowest id)
    "ties": ({"kind": "forward_kl"}, 0.5),
}


def _inputs(case: str):
    g = torch.Generator().manual_seed(zlib.crc32(case.encode()))
    scale = 40.0 if case == "huge_hidden" else 1.0  # logits in the hundreds
    h_s = torch.randn(N, HS, generator=g, dtype=torch.float64) * scale
    w_s = torch.randn(VPAD, HS, generator=g, dtype=torch.float64) * 0.5
    if case == "huge_padding":
        w_s[VOCAB:] *= 400.0
    h_t = torch.randn(N, HT, generator=g, dtype=torch.float64) * scale
    w_t = torch.randn(VPAD, HT, generator=g, dtype=torch.float64) * 0.5
    if case == "ties":  # teacher = 2 x student + a 0/1 bump per column: where the student's
        # maximum is tied, the teacher picks one of the tied columns (not always the lowest)
        h_s = torch.randint(-1, 2, h_s.shape, generator=g).double()
        w_s = torch.randint(-1, 2, w_s.shape, generator=g).double()
        h_t, w_t = torch.zeros_like(h_t), torch.zeros_like(w_t)
        h_t[:, :HS], w_t[:, :HS] = 2 * h_s, w_s
        h_t[:, HS], w_t[:, HS] = 1.0, torch.randint(0, 2, (VPAD,), generator=g).double()
    labels = torch.randint(0, VOCAB, (N,), generator=g)
    mask = (torch.rand(N, generator=g) > 0.3).double()
    return h_s, w_s, h_t, w_t, labels, mask


def _reference(h_s, w_s, h_t, w_t, labels, mask, opt, kd_w, ce_w):
    """float64: (total, ce sum, kd sum, d total/d h_s, d total/d w_s, d total/d student logits,
    teacher sums [teacher CE, entropy, top-1 agreement]) by the chain rule."""
    zs, zt = h_s @ w_s.t(), h_t @ w_t.t()
    kd_opt = {k: v for k, v in opt.items() if k not in ("chunk_size", "gemm_chunk_size")}
    kd_tok, g_kd = reference(zs, zt, kd_opt, mask, VOCAB)  # g_kd already masked
    ls = F.log_softmax(zs, -1)  # megatron's CE: every column, padding included
    ce_tok = -ls.gather(-1, labels[:, None]).squeeze(-1)
    g_ce = (ls.exp() - F.one_hot(labels, VPAD).double()) * mask[:, None]
    g = ce_w * g_ce + kd_w * g_kd
    ce_sum, kd_sum = (ce_tok * mask).sum(), kd_tok.sum()
    lt = F.log_softmax(zt, -1)  # the teacher's CE: every column too
    t_ce = -lt.gather(-1, labels[:, None]).squeeze(-1)
    lv = F.log_softmax(zt[:, :VOCAB], -1)  # its entropy, agreement: real columns only
    entropy = -(lv.exp() * lv).sum(-1)
    agree = (zs[:, :VOCAB].argmax(-1) == zt[:, :VOCAB].argmax(-1)).double()
    teacher = torch.stack([(t_ce * mask).sum(), (entropy * mask).sum(), (agree * mask).sum()])
    return ce_w * ce_sum + kd_w * kd_sum, ce_sum, kd_sum, g @ w_s, g.t() @ h_s, g, teacher


def _unfused(h_s, w_s, h_t, w_t, labels, mask, opt, kd_w, ce_w, group, rank, size):
    """The unfused path in fp32: shard logits, kd_loss, megatron-core's vocab-parallel CE."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron_kd.distill.losses import kd_loss

    zs = h_s @ w_s.t()
    zt = h_t @ w_t.t()
    kd_tok = kd_loss(zs, zt, _split(opt)[0], loss_mask=mask, tp_group=group)
    if size == 1:
        ce_tok = F.cross_entropy(zs, labels, reduction="none")
    else:  # last reader of zs: it overwrites its input with the softmax
        ce_tok = vocab_parallel_cross_entropy(zs, labels, tp_group=group)
    return ce_w * (ce_tok * mask).sum() + kd_w * kd_tok.sum()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12))


def _teacher_err(sums, ref) -> float:
    got = torch.stack([sums["teacher_ce"], sums["teacher_entropy"], sums["top1_agreement"]])
    return _rel(got, ref[6])


def _on_logits(h_s, w_s, h_t, w_t, labels, mask, opt, kd_w, ce_w, ref, group, cols, dtype,
               overwrite) -> dict:
    """mixed_kd_loss on [2, N/2, V/TP] logits of `dtype` against the float64 reference (which
    sees the same rounded logits); `overwrite`: the gradient is written over the logits."""
    from megatron_kd.distill.mixed import mixed_kd_loss

    zs, zt = (h_s @ w_s.t()).to(dtype), (h_t @ w_t.t()).to(dtype)
    if dtype != torch.float32:
        ref = _reference_on_logits(zs.double(), zt.double(), labels, mask, opt, kd_w, ce_w)
    s_local = zs[:, cols].reshape(2, N // 2, -1).clone().requires_grad_(True)
    t_local = zt[:, cols].reshape(2, N // 2, -1).clone()
    kd_opt, calls = _split(opt)
    logits = s_local * 1.0  # a non-leaf, as the output layer's logits
    total, sums = mixed_kd_loss(logits, t_local, labels.reshape(2, -1), mask.reshape(2, -1).float(), kd_opt,
                                ce_weight=ce_w, kd_weight=kd_w, tp_group=group,
                                overwrite_logits=overwrite, chunk_size=calls.get("chunk_size"))
    (2.0 * total).backward()
    tag = ("logits" if dtype == torch.float32 else "logits_bf16") + ("_overwrite" if overwrite else "")
    return {f"{tag}_loss_vs_f64": _rel(total, ref[0]), f"{tag}_ce_vs_f64": _rel(sums["ce"], ref[1]),
            f"{tag}_kd_vs_f64": _rel(sums["kd"], ref[2]),
            f"{tag}_grad_vs_f64": _rel(s_local.grad.reshape(N, -1), 2 * ref[5][:, cols]),
            f"{tag}_teacher_vs_f64": _teacher_err(sums, ref),
            f"{tag}_grad_dtype_mismatch": float(s_local.grad.dtype != dtype)}


def _split(opt: dict):
    """(KDOptions, call arguments such as chunk sizes) from one test case's options."""
    import dataclasses

    from megatron_kd.distill.options import KDOptions

    fields = {f.name for f in dataclasses.fields(KDOptions)}
    return (KDOptions(vocab_size=VOCAB, **{k: v for k, v in opt.items() if k in fields}),
            {k: v for k, v in opt.items() if k not in fields})


def _reference_on_logits(zs, zt, labels, mask, opt, kd_w, ce_w):
    """_reference from given logits: identity 'hidden states' and output weights."""
    eye = torch.eye(VPAD, dtype=torch.float64)
    return _reference(zs, eye, zt, eye, labels, mask, opt, kd_w, ce_w)


def compare(workdir: str | None = None, tps: tuple = (1, 2)) -> dict:
    """Every case at each TP size in `tps` (on 2 gloo ranks). TP=1 alone, tps=(1,), needs no
    process group: tests/distill/test_fused.py also runs it in-process, in the fast tier."""
    from megatron_kd.distill.fused import fused_output_kd

    rank = 0
    if tuple(tps) != (1,):
        dist.init_process_group("gloo", init_method="env://")
        rank = dist.get_rank()
    out = {}
    for tp in tps:
        group = None if tp == 1 else dist.new_group([0, 1])
        r = 0 if tp == 1 else rank
        width = VPAD // tp
        cols = slice(r * width, (r + 1) * width)
        for case, (opt, alpha) in CASES.items():
            ce_w, kd_w = (1.0, alpha) if "keep_ce" in case else (1 - alpha, alpha)
            h_s, w_s, h_t, w_t, labels, mask = _inputs(case)
            ref = _reference(h_s, w_s, h_t, w_t, labels, mask, opt, kd_w, ce_w)
            f32 = lambda x: x.float().clone().requires_grad_(True)  # noqa: E731
            hs, ws = f32(h_s), f32(w_s[cols])
            kd_opt, calls = _split(opt)
            total, sums = fused_output_kd(hs, ws, h_t.float(), w_t[cols].float(), labels, mask.float(), kd_opt,
                                          ce_weight=ce_w, kd_weight=kd_w, tp_group=group, **calls)
            (2.0 * total).backward()  # the incoming gradient scales both results
            grad_h = hs.grad.clone()
            if tp > 1:  # what copy_to_tensor_model_parallel_region's backward does
                dist.all_reduce(grad_h, group=group)
            hu, wu = f32(h_s), f32(w_s[cols])
            unf = _unfused(hu, wu, h_t.float(), w_t[cols].float(), labels, mask.float(), opt, kd_w,
                           ce_w, group, r, tp)
            (2.0 * unf).backward()
            grad_hu = hu.grad.clone()
            if tp > 1:
                dist.all_reduce(grad_hu, group=group)
            out[f"tp{tp}/{case}"] = {
                "loss_vs_f64": _rel(total, ref[0]),
                "ce_vs_f64": _rel(sums["ce"], ref[1]),
                "kd_vs_f64": _rel(sums["kd"], ref[2]),
                "grad_h_vs_f64": _rel(grad_h, 2 * ref[3]),
                "grad_w_vs_f64": _rel(ws.grad, 2 * ref[4][cols]),
                "loss_vs_unfused": _rel(total, unf),
                "grad_h_vs_unfused": _rel(grad_h, grad_hu),
                "grad_w_vs_unfused": _rel(ws.grad, wu.grad),
                "teacher_vs_f64": _teacher_err(sums, ref),
                "stats_finite": all(bool(torch.isfinite(v)) for v in sums.values()),
            }
            for dtype in (torch.float32, torch.bfloat16):
                for overwrite in (False, True):
                    out[f"tp{tp}/{case}"].update(_on_logits(h_s, w_s, h_t, w_t, labels, mask, opt,
                                                            kd_w, ce_w, ref, group, cols, dtype,
                                                            overwrite))
    return out
