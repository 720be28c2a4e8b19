"""Random-sampling KD (a sampled teacher cache, distill/cache.py, read by the sparse objective):
over many independent draws the mean KD gradient equals full forward KL's within its standard
error, while a top-K cache's gradient is off by far more than that (its bias), and the estimate's
variance falls as 1/N with the draws per token N. Seeded, so the verdicts are reproducible; the
thresholds are set for a false-alarm rate of 1e-3 per test (Bonferroni over the vocabulary)."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_kd.config.schema import KDConfig
from megatron_kd.distill.cache import check_kd, teacher_rows
from megatron_kd.distill.sparse import sparse_kd_loss

V, M = 40, 3000  # vocabulary; independent draws (rows) per estimate
Z_1E3 = 4.06  # two-sided z for 1e-3 / V (Bonferroni over the V coordinates)


def _one_token():
    g = torch.Generator().manual_seed(11)
    teacher = torch.randn(V, generator=g)  # flat enough that 12 tokens leave mass out
    student = torch.randn(V, generator=g) * 1.5
    return teacher, student


def _kd_gradients(rows: dict, student: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the gradient of the KD term (ce weight 0) w.r.t. the student logits."""
    n = rows["ids"].shape[0]  # rows [b = n, s = 1, ...]
    z = student.expand(n, V).clone().unsqueeze(0).requires_grad_(True)  # [s=1, n, V]
    seq = {key: v.transpose(0, 1) for key, v in rows.items()}
    total, _ = sparse_kd_loss(z, seq["ids"], seq["logp"], seq["other_logp"], torch.zeros(1, n, dtype=torch.long),
                              torch.ones(1, n), top_k=k, other_bucket=False, ce_weight=0.0, kd_weight=1.0,
                              vocab_size=V)
    total.backward()
    return z.grad[0].double()


def _sampled_rows(teacher, draws: int, seed: int) -> dict:
    logits = teacher.expand(1, M, V).contiguous()  # [s=1, b=M, V]: M independent positions
    return teacher_rows(logits, torch.zeros(1, M, dtype=torch.long), V, draws, None,
                        torch.Generator().manual_seed(seed))


def test_sampled_kd_gradient_is_unbiased_and_top_k_is_not():
    teacher, student = _one_token()
    q = torch.softmax(teacher.double(), -1)
    exact = torch.softmax(student.double(), -1) - q  # full forward KL's gradient
    grads = _kd_gradients(_sampled_rows(teacher, 12, 0), student, 12)
    # the estimator's own standard error: count_i / N has variance q_i (1 - q_i) / N per position
    mean, se = grads.mean(0), torch.sqrt(q * (1 - q) / (12 * M))
    assert torch.allclose(grads.std(0) / math.sqrt(M), se, rtol=0.15, atol=1e-4)  # as measured
    z = (mean - exact) / se
    assert float(z.abs().max()) < Z_1E3, float(z.abs().max())
    # the top-12 cache of the same teacher: one deterministic gradient, p - q_K / Q
    top = teacher_rows(teacher.view(1, 1, V), torch.zeros(1, 1, dtype=torch.long), V, 12, None)
    top_grad = _kd_gradients(top, student, 12)[0]
    bias = (top_grad - exact).abs()
    # the same test flags top-K's gradient (deterministic, growing in sigmas
    # as sqrt(M)), and its bias is larger than the sampled mean's error everywhere it matters
    assert float((bias / se).max()) > Z_1E3
    assert float(bias.max()) > 5 * float((mean - exact).abs().max())
    # what the sampled rows hold: each row's draws sum to N, the drawn ids first
    rows = _sampled_rows(teacher, 12, 1)
    counts = torch.exp(rows["logp"][:, 0].double()) * 12
    assert torch.allclose(counts.sum(-1), torch.full((M,), 12.0, dtype=torch.float64))
    assert torch.allclose(counts, counts.round(), atol=1e-4)
    assert all(len(set(r.tolist())) == 12 for r in rows["ids"][:50, 0])  # distinct ids in every slot


def test_variance_falls_with_the_draws():
    teacher, student = _one_token()
    var = {}
    for n in (2, 8, 32):
        grads = _kd_gradients(_sampled_rows(teacher, n, n), student, n)
        var[n] = float(grads.var(0).sum())
    assert var[2] > 3 * var[8] > 9 * var[32], var  # ~1/N: 4x per step, with room for the noise


def test_draws_are_reproducible_and_seeded():
    teacher, _ = _one_token()
    a, b, c = (_sampled_rows(teacher, 8, s) for s in (5, 5, 6))
    assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["logp"], b["logp"])
    assert not torch.equal(a["ids"], c["ids"])


@pytest.mark.parametrize("edit,ok", [({}, True), ({"top_k": 8}, False), ({"other_bucket": True}, False),
                                     ({"kind": "reverse_kl"}, False), ({"temperature": 2.0}, False),
                                     ({"mix": "magnitude_matched"}, False)])
def test_sampled_cache_serves_unbiased_forward_kl_only(edit, ok):
    why = check_kd(KDConfig(**edit), 12, sampled=True)
    assert (why is None) == ok, why
