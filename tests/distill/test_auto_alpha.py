"""kd.auto's per-token weights on synthetic student/teacher pairs with a known answer: a teacher
that is the labels gets the ceiling, a uniform teacher (worse than the student) gets ~0, a teacher
right on half the tokens gets those tokens; every cache kind carries what the weights need."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_kd.config.schema import AutoAlphaConfig, KDConfig
from megatron_kd.distill.auto_alpha import AutoAlpha
from megatron_kd.distill.mixed import mixed_kd_loss
from megatron_kd.distill.objective import CachedRows, KDObjective, OnlineLogits, make_loss_func
from megatron_kd.distill.options import KDOptions
from megatron_kd.distill.sparse import sparse_kd_loss

V, N = 32, 64


def _pair(teacher: str, seed: int = 0):
    """Student logits that put ~0.64 on the label (log p ≈ -0.45), and a teacher: the labels
    themselves (one-hot-ish), uniform, or the labels on the even tokens and uniform on the odd."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (N,), generator=g)
    onehot = torch.nn.functional.one_hot(labels, V).float()
    zs = torch.randn(N, V, generator=g) * 0.1 + 4.0 * onehot
    right = {"labels": torch.ones(N), "uniform": torch.zeros(N), "half": (torch.arange(N) % 2 == 0).float()}[teacher]
    zt = 20.0 * onehot * right[:, None]
    return zs, zt, labels


def _weights(teacher: str, mask=None, alpha_max=1.0, tau=1.0) -> dict:
    zs, zt, labels = _pair(teacher)
    mask = torch.ones(N) if mask is None else mask
    _, sums = mixed_kd_loss(zs.requires_grad_(True), zt, labels, mask, KDOptions(vocab_size=V), ce_weight=0.0,
                            kd_weight=0.0, auto=AutoAlpha(alpha_max, tau))
    count = mask.sum()
    return {"alpha": sums["alpha"] / count, "share": sums["share"] / count, "advantage": sums["advantage"] / count}


def test_a_teacher_that_is_the_labels_gets_the_ceiling():
    got = _weights("labels", alpha_max=0.8)
    assert got["advantage"] > 0.3 and got["share"] == 1.0
    assert 0.8 * 0.55 < got["alpha"] < 0.8  # the student already knows its labels fairly well


def test_a_uniform_teacher_worse_than_the_student_is_switched_off():
    got = _weights("uniform")
    assert got["advantage"] < -2.5 and got["share"] == 0.0
    assert got["alpha"] < 0.06


def test_a_teacher_right_on_half_the_tokens_weights_those_tokens():
    even = (torch.arange(N) % 2 == 0).float()
    right, wrong, both = _weights("half", even), _weights("half", 1 - even), _weights("half")
    assert right["alpha"] > 0.55 and wrong["alpha"] < 0.06
    assert both["share"] == 0.5
    assert torch.isclose(both["alpha"], (right["alpha"] + wrong["alpha"]) / 2)


def test_the_weights_are_constants_of_the_step():
    """The gradient is the weighted objective's with α_t held fixed (float64 autograd with the
    weights detached), not that of α_t's own dependence on the student."""
    zs, zt, labels = _pair("half")
    x = zs.clone().requires_grad_(True)
    total, _ = mixed_kd_loss(x, zt, labels, torch.ones(N), KDOptions(vocab_size=V), ce_weight=0.0, kd_weight=0.0,
                             auto=AutoAlpha(1.0, 0.5))
    total.backward()
    z = zs.double().requires_grad_(True)
    logp_s, logp_t = torch.log_softmax(z, -1), torch.log_softmax(zt.double(), -1)
    ce = -logp_s.gather(-1, labels[:, None])[:, 0]
    kl = (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    alpha = torch.sigmoid((logp_t.gather(-1, labels[:, None])[:, 0] + ce.detach()) / 0.5)
    want = ((1 - alpha) * ce + alpha * kl).sum()
    want.backward()
    assert abs(total.item() - want.item()) < 1e-5 * want.item()
    assert (x.grad.double() - z.grad).abs().max() < 1e-6


def _objective(**auto) -> KDObjective:
    return KDObjective.from_config(KDConfig(alpha=1.0, auto=AutoAlphaConfig(enabled=True, **auto),
                                            teacher_metrics=False), V)


def test_the_reports_carry_the_weights_mean_share_and_advantage():
    zs, zt, labels = _pair("half")
    mask = torch.ones(N, 1)
    _, count, reports = make_loss_func(_objective(), 1.0, 1.0, labels[:, None], mask, OnlineLogits(zt[:, None]),
                                       None)(zs[:, None].clone().requires_grad_(True))
    mean = {k: float(v[0] / v[1]) for k, v in reports.items()}
    assert mean["kd/auto_share"] == 0.5
    assert 0.3 < mean["kd/alpha_effective"] < 0.5 and mean["kd/teacher_advantage"] < 0


def test_a_cache_without_the_labels_log_probability_is_refused():
    zs, _, labels = _pair("labels")
    rows = {"ids": torch.zeros(1, N, 4, dtype=torch.int32), "logp": torch.full((1, N, 4), -2.0),
            "other_logp": torch.full((1, N), -1.0)}
    obj = _with_top_k(_objective(), 4)
    with pytest.raises(ValueError, match="no label_logp"):
        make_loss_func(obj, 1.0, 1.0, labels[:, None], torch.ones(N, 1), CachedRows(rows), None)(
            zs[:, None].clone().requires_grad_(True))


def _with_top_k(obj: KDObjective, k: int) -> KDObjective:
    return dataclasses.replace(obj, opts=dataclasses.replace(obj.opts, top_k=k, other_bucket=True))


def test_the_sparse_kernel_needs_the_labels_log_probability():
    zs, _, labels = _pair("labels")
    with pytest.raises(ValueError, match="label_logp"):
        sparse_kd_loss(zs.clone(), torch.zeros(N, 4, dtype=torch.long), torch.full((N, 4), -2.0),
                       torch.full((N,), -1.0), labels, torch.ones(N), top_k=4, other_bucket=True, ce_weight=0.0,
                       kd_weight=1.0, vocab_size=V,
                       auto=AutoAlpha(1.0, 1.0))
