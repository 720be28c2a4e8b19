"""kd.auto's α trajectory on 2 gloo ranks, laid out as DP=2 (each rank half of each micro-batch's
samples) and then as TP=2 (each rank half of the vocabulary columns), beside the one-process run
on the same global micro-batches, for each kind of teacher signal (online at T = 1 and T = 2, a
top-K cache with its other bucket and through rebuilt logits, a sampled cache, a full cache)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_kd.config.schema import AutoAlphaConfig, KDConfig
from megatron_kd.distill.cache import teacher_rows
from megatron_kd.distill.objective import CachedRows, KDObjective, OnlineLogits, make_loss_func

V, VPAD, S, B = 59, 64, 5, 4  # B samples per global micro-batch: B // 2 on each data-parallel rank
MICRO_BATCHES, ALPHA_MAX, RANKS = 5, 0.8, 2
ROUTES = {  # name -> (kd options, teacher signal kind)
    "online_t1": ({}, "online"),
    "online_t2": ({"temperature": 2.0, "teacher_metrics": False}, "online"),
    "cache_topk_other": ({"top_k": 6, "other_bucket": True}, "topk"),
    "cache_topk_hard": ({"kind": "hard"}, "topk"),  # rebuilt logits, the label's log-probability from the rows
    "cache_sampled": ({}, "sampled"),
    "cache_full_reverse": ({"kind": "reverse_kl"}, "full"),
}


def micro_batch(i: int):
    """Student and teacher logits `[S, B, VPAD]`, labels and mask `[S, B]` of global micro-batch i:
    a teacher that leads on the labels by a margin that changes from one micro-batch to the next
    (so the trend moves), the same on every rank."""
    g = torch.Generator().manual_seed(100 + i)
    labels = torch.randint(0, V, (S, B), generator=g)
    onehot = torch.nn.functional.one_hot(labels, VPAD).float()
    zs = torch.randn(S, B, VPAD, generator=g) * 2 + 1.5 * onehot
    zt = torch.randn(S, B, VPAD, generator=g) * 2 + (0.5 + 0.6 * i) * onehot
    mask = (torch.rand(S, B, generator=g) > 0.25).float()
    mask[0] = 1.0  # every sample has tokens
    return zs, zt, labels, mask


def signal(kind: str, zt: torch.Tensor, labels: torch.Tensor, samples: slice, cols: slice, i: int):
    """The teacher's signal for these samples and vocabulary columns: its logits, or a cache's rows
    (written from the whole micro-batch, as the cache job does, then read for these samples)."""
    if kind == "online":
        return OnlineLogits(zt[:, samples, cols].contiguous())
    top_k = {"topk": 8, "sampled": 12, "full": None}[kind]
    sampler = torch.Generator().manual_seed(7 + i) if kind == "sampled" else None
    rows = teacher_rows(zt, labels, V, top_k, None, sample_generator=sampler)
    return CachedRows({k: v[samples] for k, v in rows.items()}, sampled=kind == "sampled")


def trajectory(route: str, dp_rank: int | None, tp_rank: int | None, tp_group, dp_group) -> dict:
    """The α each micro-batch used and the trend's final mean: on one rank's shard (`dp_rank`,
    `tp_rank`), or with both None the whole micro-batches in one process."""
    options, kind = ROUTES[route]
    kd = KDObjective.from_config(KDConfig(alpha=ALPHA_MAX, auto=AutoAlphaConfig(enabled=True, tau=0.5), **options),
                                 V, data_parallel_group=dp_group)
    samples = slice(None) if dp_rank is None else slice(dp_rank * B // RANKS, (dp_rank + 1) * B // RANKS)
    width = VPAD if tp_rank is None else VPAD // RANKS
    cols = slice(0, width) if tp_rank is None else slice(tp_rank * width, (tp_rank + 1) * width)
    levels = []
    for i in range(MICRO_BATCHES):
        zs, zt, labels, mask = micro_batch(i)
        levels.append(kd.auto_alpha(ALPHA_MAX).level)
        loss_func = make_loss_func(kd, ALPHA_MAX, options.get("temperature", 1.0), labels[:, samples].contiguous(),
                                   mask[:, samples].contiguous(), signal(kind, zt, labels, samples, cols, i),
                                   tp_group)
        total, _, _ = loss_func(zs[:, samples, cols].contiguous().requires_grad_(True))
        total.backward()
    return {"levels": levels, "mean": kd.trend.mean}


def main(workdir: str) -> dict:
    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    pair = dist.new_group(list(range(RANKS)))
    out = {}
    for route in ROUTES:
        out[route] = {
            "dp2": trajectory(route, rank, None, None, pair),
            "tp2": trajectory(route, None, rank, pair, None),
            # each data-parallel rank on its own samples, its trend not reduced: what the reduction prevents
            "dp2_unreduced": trajectory(route, rank, None, None, None),
            "one_process": trajectory(route, None, None, None, None),
        }
    dist.destroy_process_group()
    return out
