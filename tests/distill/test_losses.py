"""kd_loss: every kind and option against a float64 full-vocabulary reference at TP=1, 2, 4 (4 gloo
ranks), and at TP=1 in this process (the fast tier's copy of the same comparisons)."""

import pytest
import torch

from megatron_kd.distill.losses import kd_loss
from megatron_kd.distill.options import KDOptions
from tests.distributed import run_distributed


@pytest.fixture(scope="module")
def comparisons(tmp_path_factory):  # the tests using it are marked slow and multiproc
    return run_distributed("tests.workers.kd_losses:compare_all", 4,
                           tmp_path_factory.mktemp("kd"), timeout=600)


def _check(key: str, r: dict) -> None:
    """One case against the float64 reference: finite, within tolerance, fp32 loss."""
    tol = 1e-6 if "/float32/" in key else 1e-2  # bf16 gradients are returned in bf16
    assert r["finite"], key
    assert r["loss_err"] <= (1e-6 if "/float32/" in key else 1e-5), (key, r)
    assert r["grad_err"] <= tol, (key, r)
    assert r["loss_dtype"] == "torch.float32"


@pytest.mark.slow
@pytest.mark.multiproc
def test_matches_float64_reference_everywhere(comparisons):
    worst = {}
    for results in comparisons:  # every rank checks its own shard
        for key, r in results.items():
            _check(key, r)
            worst[key] = max(worst.get(key, 0), r["loss_err"], r["grad_err"])
    # All kinds x options x hostile inputs x TP sizes were run.
    assert len(worst) == 5 * 10 * 3 + 2 * 10 * 3


@pytest.mark.slow
@pytest.mark.multiproc
def test_bf16_never_negative(comparisons):
    for results in comparisons:
        for key, r in results.items():
            if "bfloat16" in key and "hard" not in key:
                assert r["min_loss"] >= 0.0, (key, r)


def test_tp1_in_process_matches_float64_reference():
    """The TP=1 third of the comparisons above, in this process: the same cases and tolerances."""
    from tests.workers.kd_losses import compare

    results = compare()
    for key, r in results.items():
        _check(key, r)
        if "bfloat16" in key and "hard" not in key:
            assert r["min_loss"] >= 0.0, (key, r)
    assert len(results) == 5 * 10 + 2 * 10 and all(k.endswith("/tp1") for k in results)


def test_identical_logits_give_zero_loss_and_gradient():
    z = torch.randn(6, 32, dtype=torch.bfloat16)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        s = z.clone().requires_grad_(True)
        loss = kd_loss(s, z.clone(), KDOptions(kind=kind, temperature=1.7))
        loss.sum().backward()
        assert loss.abs().max().item() < 1e-6 and s.grad.abs().max().item() < 1e-6


def test_option_errors():
    z = torch.randn(2, 8)
    with pytest.raises(ValueError, match="kd kind must be one of"):
        kd_loss(z, z, KDOptions(kind="kl"))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kd_loss(z, z, KDOptions(temperature=0))
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        kd_loss(z, z, KDOptions(top_k=0))
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(z, torch.randn(2, 9))
