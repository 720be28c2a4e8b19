"""kd.auto from every cache kind, at the objective (make_loss_func): each supplies the teacher's
log-probability of every label, so the advantage (and the next micro-batch's α) is the one the
teacher's own logits give: a top-K cache with its other bucket, renormalised, and on the dense
route (kd.kind=hard, whose rebuilt logits hold the label only among the K), a sampled cache, a
full cache. Labels are mostly outside the K kept ids, where rebuilt logits would be wrong."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_kd.config.schema import AutoAlphaConfig, KDConfig
from megatron_kd.distill.cache import teacher_rows
from megatron_kd.distill.objective import CachedRows, KDObjective, choose_route, make_loss_func

V, S, B, K, DRAWS, TAU = 32, 6, 2, 4, 12, 0.5
KINDS = {  # name -> (KD options, which rows, the route kd.auto takes)
    "topk_other": ({"top_k": K, "other_bucket": True}, "topk", "sparse"),
    "topk_renormalised": ({"top_k": K}, "topk", "sparse"),
    "topk_hard": ({"kind": "hard"}, "topk", "one_pass"),
    "sampled": ({}, "sampled", "sparse"),
    "full": ({}, "full", "one_pass"),
    "full_reverse": ({"kind": "reverse_kl", "temperature": 2.0}, "full", "one_pass"),
}


@pytest.fixture(scope="module")
def micro_batch():
    """Sequence-major student and teacher logits `[S, B, V]`, labels and mask `[S, B]`, each kind
    of cache's rows (sample-major, as a cache reader gives them), and the masked mean advantage
    log p_T(y) - log p_S(y) from the logits themselves (float64)."""
    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(S, B, V, generator=g) * 2, torch.randn(S, B, V, generator=g) * 2
    labels = torch.randint(0, V, (S, B), generator=g)
    mask = (torch.rand(S, B, generator=g) > 0.2).float()
    rows = {"topk": teacher_rows(zt, labels, V, K, None), "full": teacher_rows(zt, labels, V, None, None),
            "sampled": teacher_rows(zt, labels, V, DRAWS, None, sample_generator=torch.Generator().manual_seed(1))}
    lab = labels[..., None]
    advantage = torch.log_softmax(zt.double(), -1).gather(-1, lab) - torch.log_softmax(zs.double(), -1).gather(-1, lab)
    outside = (rows["topk"]["ids"].transpose(0, 1) != lab).all(-1).float().mean().item()
    return zs, labels, mask, rows, float((advantage[..., 0] * mask).sum() / mask.sum()), outside


@pytest.mark.parametrize("kind", KINDS)
def test_every_cache_kind_gives_the_teachers_advantage(kind, micro_batch):
    zs, labels, mask, rows, want, outside = micro_batch
    assert outside > 0.5  # most labels are not among the K kept ids
    options, which, route = KINDS[kind]
    kd = KDObjective.from_config(KDConfig(alpha=1.0, auto=AutoAlphaConfig(enabled=True, tau=TAU), **options), V)
    signal = CachedRows(rows[which], sampled=which == "sampled")
    temperature = options.get("temperature", 1.0)
    assert choose_route(kd, 1.0, temperature, signal) == route
    levels = []
    for _ in range(2):
        levels.append(kd.auto_alpha(1.0).level)
        total, _, reports = make_loss_func(kd, 1.0, temperature, labels, mask, signal, None)(
            zs.clone().requires_grad_(True))
        total.backward()
        got = reports["kd/teacher_advantage"]
        assert float(got[0] / got[1]) == pytest.approx(want, rel=1e-5)
    assert levels[0] == 1.0 and levels[1] == pytest.approx(math.tanh(want / TAU), rel=1e-5)
