"""kd_loss against a float64 full-vocabulary reference at TP=1, 2 and 4 (run on 4 gloo ranks)."""

from __future__ import annotations

import math
import zlib

import torch
import torch.distributed as dist
import torch.nn.functional as F

WIDTH = 40  # columns per rank at TP=4; the full padded vocabulary is 160
FULL = 4 * WIDTH


def reference(zs, zt, opt: dict, mask, vocab):
    """float64 loss per token and gradient w.r.t. the student's full-vocabulary logits."""
    zs = zs.double().detach().clone().requires_grad_(True)
    zt = zt.double()
    keep_cols = torch.isfinite(zs[0]) & torch.isfinite(zt[0])
    keep_cols[vocab:] = False
    cols = keep_cols.nonzero().squeeze(-1)
    T = opt.get("temperature", 1.0)
    scale = T * T if opt.get("t2_scale", True) else 1.0
    a, c = zs[:, cols] / T, zt[:, cols] / T
    ls, lt = F.log_softmax(a, -1), F.log_softmax(c, -1)
    ps, pt = ls.exp(), lt.exp()
    kind = opt.get("kind", "forward_kl")
    if kind == "hard":
        target = torch.sort(c, dim=-1, descending=True, stable=True).indices[:, 0]
        loss = -ls.gather(-1, target[:, None]).squeeze(-1)
    elif kind == "reverse_kl":
        loss = (ps * (ls - lt)).sum(-1)
    elif kind == "jsd":
        b = opt["jsd_beta"]
        m = b * pt + (1 - b) * ps
        loss = b * (pt * (lt - m.log())).sum(-1) + (1 - b) * (ps * (ls - m.log())).sum(-1)
    elif opt.get("top_k") or opt.get("top_p"):
        order = torch.sort(c, dim=-1, descending=True, stable=True).indices
        keep = torch.zeros_like(c, dtype=torch.bool)
        if opt.get("top_k"):
            keep.scatter_(-1, order[:, :opt["top_k"]], True)
        else:
            sp = pt.gather(-1, order)
            first = (sp.cumsum(-1) >= opt["top_p"] * (1 - 1e-7)).double().argmax(-1)
            thr = sp.gather(-1, first[:, None])
            keep = pt >= thr
        kt = torch.where(keep, pt, torch.zeros_like(pt))
        mass = kt.sum(-1)
        if opt.get("other_bucket"):
            q_o = 1 - mass
            s_o = 1 - torch.where(keep, ps, torch.zeros_like(ps)).sum(-1)
            loss = torch.where(keep, pt * (lt - ls), torch.zeros_like(pt)).sum(-1) \
                + torch.where(q_o > 1e-15, q_o * (q_o.clamp(min=1e-300).log() - s_o.log()), torch.zeros_like(q_o))
        else:
            ptt = kt / mass[:, None]
            loss = torch.where(keep, ptt * (ptt.clamp(min=1e-300).log() - ls), torch.zeros_like(ptt)).sum(-1)
    else:
        loss = (pt * (lt - ls)).sum(-1)
    loss = loss * scale
    if mask is not None:
        loss = loss * mask.double()
    loss.sum().backward()
    return loss.detach(), zs.grad.detach()


def _inputs(case: str, n=12, vocab=150):
    g = torch.Generator().manual_seed(zlib.crc32(case.encode()))  # same on every rank
    zs = torch.randn(n, FULL, generator=g) * 3
    zt = torch.randn(n, FULL, generator=g) * 3
    mask = None
    if case == "huge":
        zs = torch.sign(torch.randn(n, FULL, generator=g)) * torch.rand(n, FULL, generator=g) * 1e4
        zt = torch.sign(torch.randn(n, FULL, generator=g)) * torch.rand(n, FULL, generator=g) * 1e4
    if case == "neginf":
        zs[:, [3, 47, 90]] = -math.inf  # banned tokens: -inf in both models
        zt[:, [3, 47, 90]] = -math.inf
    if case == "ties":
        zt = torch.randint(-2, 3, (n, FULL), generator=g).float()  # many equal teacher logits
    if case == "masked":
        mask = (torch.rand(n, generator=g) > 0.4).float()
    return zs, zt, mask, vocab


OPTIONS = {
    "fkl": {"kind": "forward_kl"},
    "fkl_T2": {"kind": "forward_kl", "temperature": 2.0},
    "fkl_T05_noscale": {"kind": "forward_kl", "temperature": 0.5, "t2_scale": False},
    "rkl": {"kind": "reverse_kl"},
    "jsd": {"kind": "jsd", "jsd_beta": 0.3},
    "hard": {"kind": "hard"},
    "topk": {"kind": "forward_kl", "top_k": 7},
    "topk_other": {"kind": "forward_kl", "top_k": 7, "other_bucket": True},
    "topp": {"kind": "forward_kl", "top_p": 0.8},
    "topp_other": {"kind": "forward_kl", "top_p": 0.8, "other_bucket": True},
}
INPUTS = ["random", "huge", "neginf", "ties", "masked"]


def compare_all(workdir: str) -> dict:
    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    groups = {1: None, 2: None, 4: dist.new_group([0, 1, 2, 3])}
    pair = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    groups[2] = pair[rank // 2]
    out = compare(groups, rank)
    dist.destroy_process_group()
    return out


def compare(groups: dict | None = None, rank: int = 0) -> dict:
    """Every input x option x dtype against the float64 reference, at each TP size in `groups`
    (TP size -> its process group; this rank's shard). The default, TP=1 alone, needs no process
    group: tests/distill/test_losses.py also runs it in-process, in the fast tier."""
    from megatron_kd.distill.losses import kd_loss
    from megatron_kd.distill.options import KDOptions

    groups = groups or {1: None}
    out = {}
    for inp in INPUTS:
        for name, opt in OPTIONS.items():
            if inp == "huge" and opt.get("kind") in ("reverse_kl", "jsd"):
                pass  # run too: huge logits are the hostile case for every kind
            zs, zt, mask, vocab = _inputs(inp + name)
            ref_loss, ref_grad = reference(zs, zt, opt, mask, vocab)
            for dtype in (torch.float32, torch.bfloat16):
                if dtype == torch.bfloat16 and inp not in ("random", "masked"):
                    continue
                zs_d, zt_d = zs.to(dtype), zt.to(dtype)
                if dtype == torch.bfloat16:  # the reference sees the same rounded inputs
                    ref_loss_d, ref_grad_d = reference(zs_d.float(), zt_d.float(), opt, mask, vocab)
                else:
                    ref_loss_d, ref_grad_d = ref_loss, ref_grad
                for tp in groups:
                    width = FULL // tp
                    r = (rank % tp) if tp > 1 else 0
                    sl = slice(r * width, (r + 1) * width)
                    s_local = zs_d[:, sl].clone().requires_grad_(True)
                    t_local = zt_d[:, sl].clone()
                    loss = kd_loss(s_local, t_local, KDOptions(vocab_size=vocab, **opt), loss_mask=mask,
                                   tp_group=groups[tp], chunk_size=5)
                    loss.sum().backward()
                    scale = max(1.0, ref_loss_d.abs().max().item())
                    gscale = max(1.0, ref_grad_d.abs().max().item())
                    key = f"{inp}/{name}/{str(dtype)[6:]}/tp{tp}"
                    out[key] = {
                        "loss_err": (loss.double() - ref_loss_d).abs().max().item() / scale,
                        "grad_err": (s_local.grad.double() - ref_grad_d[:, sl]).abs().max().item() / gscale,
                        "finite": bool(torch.isfinite(loss).all()),
                        "min_loss": loss.min().item(),
                        "loss_dtype": str(loss.dtype),
                        "grad_dtype": str(s_local.grad.dtype),
                    }
    return out
