"""kd.auto on synthetic student/teacher pairs with a known answer: a teacher that is the labels
keeps KD on (α = α_max·tanh(advantage / τ)), a uniform teacher (worse than the student) switches
it off, a teacher right on half the tokens leads on exactly those; the weights are constants of
the micro-batch; a cache without the label's log-probability is refused."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from megatron_kd.config.schema import AutoAlphaConfig, KDConfig
from megatron_kd.distill.auto_alpha import AdvantageTrend, AutoAlpha
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


def _run(teacher: str, micro_batches: int, alpha_max: float = 1.0, tau: float = 1.0, mask=None) -> list[dict]:
    """kd.auto over `micro_batches` micro-batches of one pair through make_loss_func (the training
    step's entrance): each one's token means of the reports."""
    zs, zt, labels = _pair(teacher)
    obj = _objective(tau=tau)
    mask = torch.ones(N, 1) if mask is None else mask[:, None]
    out = []
    for _ in range(micro_batches):
        _, count, reports = make_loss_func(obj, alpha_max, 1.0, labels[:, None], mask, OnlineLogits(zt[:, None]),
                                           None)(zs[:, None].clone().requires_grad_(True))
        out.append({k: float(v[0] / v[1]) for k, v in reports.items()})
    return out


def test_a_teacher_that_is_the_labels_keeps_kd_on():
    steps = _run("labels", 3, alpha_max=0.8)
    advantage = steps[0]["kd/teacher_advantage"]
    assert advantage > 0.3 and all(s["kd/auto_share"] == 1.0 for s in steps)
    assert steps[0]["kd/alpha_effective"] == pytest.approx(0.8)  # the ceiling until an advantage is known
    assert steps[-1]["kd/alpha_effective"] == pytest.approx(0.8 * math.tanh(advantage), rel=1e-5)


def test_a_uniform_teacher_worse_than_the_student_is_switched_off():
    steps = _run("uniform", 2)
    assert steps[0]["kd/teacher_advantage"] < -2.5 and steps[0]["kd/auto_share"] == 0.0
    assert steps[1]["kd/alpha_effective"] == 0.0


def test_a_teacher_right_on_half_the_tokens_leads_on_those_tokens():
    even = (torch.arange(N) % 2 == 0).float()
    right, wrong, both = _run("half", 1, mask=even)[0], _run("half", 1, mask=1 - even)[0], _run("half", 2)
    assert right["kd/auto_share"] == 1.0 and wrong["kd/auto_share"] == 0.0 and both[0]["kd/auto_share"] == 0.5
    mean = (right["kd/teacher_advantage"] + wrong["kd/teacher_advantage"]) / 2
    assert both[0]["kd/teacher_advantage"] == pytest.approx(mean, rel=1e-6)
    # on average the student is the better predictor here: KD off after the first micro-batch
    assert mean < 0 and both[1]["kd/alpha_effective"] == 0.0


def test_the_trend_is_a_running_mean_and_sets_the_level():
    trend = AdvantageTrend()
    assert trend.level(0.9, 1.0) == 0.9
    trend.update(torch.tensor(4.0), torch.tensor(2.0))
    trend.update(torch.tensor(0.0), torch.tensor(0.0))  # an empty micro-batch changes nothing
    trend.update(torch.tensor(-2.0), torch.tensor(2.0))
    assert trend.mean == pytest.approx(0.9 * 2.0 - 0.1)
    assert trend.level(0.9, 2.0) == pytest.approx(0.9 * math.tanh(1.7 / 2.0))


def test_the_weights_are_constants_of_the_micro_batch():
    """kd.auto at level α is the fixed-α objective at α, loss and gradient (no gradient through α)."""
    zs, zt, labels = _pair("half")
    grads, totals = [], []
    for kwargs in ({"ce_weight": 0.0, "kd_weight": 0.0, "auto": AutoAlpha(1.0, 0.3)},
                   {"ce_weight": 0.7, "kd_weight": 0.3}):
        x = zs.clone().requires_grad_(True)
        total, _ = mixed_kd_loss(x, zt, labels, torch.ones(N), KDOptions(vocab_size=V), **kwargs)
        total.backward()
        grads.append(x.grad)
        totals.append(total.item())
    assert totals[0] == pytest.approx(totals[1], rel=1e-6)
    assert (grads[0] - grads[1]).abs().max() < 1e-7


def _objective(**auto) -> KDObjective:
    return KDObjective.from_config(KDConfig(alpha=1.0, auto=AutoAlphaConfig(enabled=True, **auto),
                                            teacher_metrics=False), V)


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


def test_the_trend_resumes_exactly_from_its_json_state():
    """A run resumed from the saved state uses the same α as the run that went on."""
    zs, zt, labels = _pair("half")
    mask = (torch.arange(N) % 3 != 0).float()[:, None]

    def step(obj):
        total, _, reports = make_loss_func(obj, 0.9, 1.0, labels[:, None], mask, OnlineLogits(zt[:, None]),
                                           None)(zs[:, None].clone().requires_grad_(True))
        return total.item(), float(reports["kd/alpha_effective"][0])

    running = _objective(tau=0.5)
    assert json.loads(json.dumps(running.state_dict())) == {"auto_trend": {"mean": None}}
    step(running)
    step(running)
    resumed = _objective(tau=0.5)
    resumed.load_state_dict(json.loads(json.dumps(running.state_dict())))
    assert resumed.trend.mean == running.trend.mean is not None
    assert step(resumed) == step(running)


@pytest.mark.parametrize("state", [{"auto_trend": {"mean": "x"}}, {"auto_trend": {"mean": math.inf}},
                                   {"auto_trend": {}}, {"trend": {"mean": 0.1}}, None])
def test_a_damaged_trend_state_is_refused_in_one_line(state):
    with pytest.raises(ValueError, match=r"^[^\n]*checkpoint is damaged") as info:
        _objective().load_state_dict(state)
    assert "\n" not in str(info.value)
