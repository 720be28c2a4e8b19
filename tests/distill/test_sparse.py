"""The top-K cache objective (distill/sparse.py) against the online objective on the full teacher
(mixed_kd_loss, itself tested against float64): loss, CE and KD sums and the gradient, with
padding columns, masked tokens, huge logits, k' < K and k' = K, other bucket on and off."""

import math

import pytest
import torch

from megatron_kd.distill.cache import teacher_rows
from megatron_kd.distill.mixed import mixed_kd_loss
from megatron_kd.distill.options import KDOptions
from megatron_kd.distill.sparse import sparse_kd_loss

V, PADDED = 50, 64


def _case(seed: int, huge: bool):
    g = torch.Generator().manual_seed(seed)
    s, b = 6, 3
    zs = torch.randn(s, b, PADDED, generator=g, dtype=torch.float64) * 3
    zt = torch.randn(s, b, PADDED, generator=g, dtype=torch.float64) * 3
    if huge:
        zs[0, 0] += 800.0
        zt[1, 1, :V] *= 40.0
        zs[2, :, V:] = 900.0  # padding columns far above the real ones
    labels = torch.randint(0, V, (s, b), generator=g)
    mask = (torch.rand(s, b, generator=g) > 0.25).double()
    return zs.float(), zt.float(), labels, mask


@pytest.mark.parametrize("huge", [False, True])
@pytest.mark.parametrize("other_bucket", [True, False])
@pytest.mark.parametrize("k_cache,k_kd", [(16, 16), (16, 5)])
def test_sparse_objective_matches_online(huge, other_bucket, k_cache, k_kd):
    zs, zt, labels, mask = _case(k_cache * 10 + k_kd + huge, huge)
    rows = teacher_rows(zt, labels, V, k_cache, None)  # [b, s, ...] as the cache stores them
    seq = lambda t: t.transpose(0, 1)  # noqa: E731
    ce_w, kd_w = 0.3, 0.7
    a = zs.clone().requires_grad_(True)
    total, sums = sparse_kd_loss(a * 1.0, seq(rows["ids"]), seq(rows["logp"]), seq(rows["other_logp"]), labels,
                                 mask, top_k=k_kd, other_bucket=other_bucket, ce_weight=ce_w, kd_weight=kd_w,
                                 vocab_size=V, chunk_size=4)
    (2.0 * total).backward()
    b = zs.clone().requires_grad_(True)
    ref, ref_sums = mixed_kd_loss(b * 1.0, zt, labels, mask, KDOptions(top_k=k_kd, other_bucket=other_bucket,
                                                                      vocab_size=V),
                                  ce_weight=ce_w, kd_weight=kd_w, metrics=False)
    (2.0 * ref).backward()
    assert abs(total.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    assert abs(sums["ce"].item() - ref_sums["ce"].item()) <= 1e-5 * max(1.0, abs(ref_sums["ce"].item()))
    assert abs(sums["kd"].item() - ref_sums["kd"].item()) <= 1e-5 * max(1.0, abs(ref_sums["kd"].item()))
    assert (a.grad - b.grad).abs().max().item() <= 1e-5
    assert a.grad[mask == 0].abs().max().item() == 0.0  # masked tokens: no gradient


def test_k_larger_than_the_cache_is_refused():
    zs, zt, labels, mask = _case(0, False)
    rows = teacher_rows(zt, labels, V, 4, None)
    seq = lambda t: t.transpose(0, 1)  # noqa: E731
    with pytest.raises(ValueError, match="larger than the cache's K=4"):
        sparse_kd_loss(zs.clone(), seq(rows["ids"]), seq(rows["logp"]), seq(rows["other_logp"]), labels, mask,
                       top_k=5, other_bucket=True, ce_weight=0.5, kd_weight=0.5, vocab_size=V)


@pytest.mark.parametrize("tail", [-20.0, -30.0])
def test_nearly_certain_student_against_float64(tail):
    """The student all but certain of a kept token: its mass outside the kept set (~1e-9 and
    below) must come from a direct sum, not 1 - sum(kept); both objectives against float64."""
    k = 4
    z = torch.full((1, 1, V), tail)
    z[0, 0, 0] = 0.0
    q = torch.tensor([0.9, 0.05, 0.02, 0.01], dtype=torch.float64)
    q_o = 0.02
    p = torch.softmax(z.double().view(-1)[:V], -1)
    s_o = p[k:].sum()
    ref_loss = (q * (q.log() - p[:k].log())).sum() + q_o * (math.log(q_o) - s_o.log())
    ref_grad = torch.cat([p[:k] - q, p[k:V] * (1 - q_o / s_o)])
    ids = torch.arange(k).view(1, 1, k).int()
    labels, mask = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1)
    a = z.clone().requires_grad_(True)
    total, _ = sparse_kd_loss(a * 1.0, ids, q.float().log().view(1, 1, k), torch.tensor([[math.log(q_o)]]),
                              labels, mask, top_k=k, other_bucket=True, ce_weight=0.0, kd_weight=1.0, vocab_size=V)
    total.backward()
    assert abs(total.item() - ref_loss.item()) < 1e-6
    assert (a.grad.view(-1)[:V].double() - ref_grad).abs().max().item() < 1e-6
    teacher = torch.full((1, 1, PADDED), -1e4)
    teacher[0, 0, :k] = q.float().log()
    teacher[0, 0, k:V] = math.log(q_o / (V - k))
    b = z.clone().requires_grad_(True)
    online, _ = mixed_kd_loss(b * 1.0, teacher[..., :V], labels, mask, KDOptions(top_k=k, other_bucket=True,
                                                                                vocab_size=V),
                              ce_weight=0.0, kd_weight=1.0, metrics=False)
    online.backward()
    assert abs(online.item() - ref_loss.item()) < 1e-6
    assert (b.grad.view(-1).double() - ref_grad).abs().max().item() < 1e-6


def test_renormalised_with_underflowing_teacher_probabilities():
    zs, _, labels, mask = _case(3, False)
    n = labels.numel()
    ids = torch.arange(4).repeat(n).view(*labels.shape, 4).int()
    q_logp = torch.tensor([0.0, -800.0, -900.0, -1000.0]).repeat(n).view(*labels.shape, 4)
    total, sums = sparse_kd_loss(zs.clone().requires_grad_(True) * 1.0, ids, q_logp, torch.full(labels.shape, -5.0),
                                 labels, mask, top_k=4, other_bucket=False, ce_weight=0.5, kd_weight=0.5,
                                 vocab_size=V)
    assert math.isfinite(total.item()) and math.isfinite(sums["kd"].item())
