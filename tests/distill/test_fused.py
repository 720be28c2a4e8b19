"""The one-pass mixed objective: on whole logits (the default unfused path, fp32 and bf16) and
fused with the output layer (kd.fused_output_layer), it equals a float64 reference and the
separate-pass path (megatron-core's CE + kd_loss) in loss, CE/KD/teacher-metric sums and the
gradients of logits, hidden states and output weight, at TP=1 and TP=2 (2 gloo ranks), and at TP=1
in this process (the fast tier's copy of the same comparisons)."""

import pytest

from tests.distributed import run_distributed


@pytest.fixture(scope="module")
def comparisons(tmp_path_factory):
    return run_distributed("tests.workers.fused_kd:compare", 2, tmp_path_factory.mktemp("fused"))


@pytest.mark.slow
@pytest.mark.multiproc
def test_one_pass_objective_matches_separate_passes_and_float64(comparisons):
    seen = set()
    for results in comparisons:  # each rank checks its own shard of the gradients
        for key, r in results.items():
            seen.add(key)
            _check(key, r)
    assert len(seen) == 2 * 8


def test_tp1_in_process_matches_separate_passes_and_float64():
    """The TP=1 half of the comparisons above, in this process: the same cases and tolerances."""
    from tests.workers.fused_kd import compare

    results = compare(tps=(1,))
    for key, r in results.items():
        _check(key, r)
    assert len(results) == 8 and all(k.startswith("tp1/") for k in results)


def test_mismatched_shapes_are_refused():
    import torch

    from megatron_kd.distill.fused import fused_output_kd
    from megatron_kd.distill.mixed import mixed_kd_loss

    z, labels = torch.randn(2, 3, 16), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="must have the same shape"):
        mixed_kd_loss(z, torch.randn(2, 3, 17), labels, torch.ones(2, 3), ce_weight=0.5, kd_weight=0.5)
    with pytest.raises(ValueError, match="one entry per token"):
        mixed_kd_loss(z, z, labels[:, :2], torch.ones(2, 2), ce_weight=0.5, kd_weight=0.5)

    h, w = torch.randn(4, 8), torch.randn(16, 8)
    with pytest.raises(ValueError, match="vocabulary rows per rank"):
        fused_output_kd(h, w, h, torch.randn(17, 8), torch.zeros(4, dtype=torch.long), torch.ones(4),
                        ce_weight=0.5, kd_weight=0.5)
    with pytest.raises(ValueError, match="token counts differ"):
        fused_output_kd(h, w, torch.randn(5, 8), w, torch.zeros(4, dtype=torch.long), torch.ones(4),
                        ce_weight=0.5, kd_weight=0.5)


def _check(key: str, r: dict) -> None:
    """One case's errors against float64, within its tolerance."""
    assert r["stats_finite"], key
    assert {"logits_grad_vs_f64", "logits_bf16_grad_vs_f64", "logits_overwrite_grad_vs_f64",
            "logits_bf16_overwrite_grad_vs_f64", "teacher_vs_f64"} <= set(r)
    for name, err in r.items():
        # a bf16 gradient is returned in bf16 (relative rounding 2^-8)
        tol = 1e-2 if name.startswith("logits_bf16") and name.endswith("grad_vs_f64") else 1e-5
        if name != "stats_finite":
            assert err <= tol, (key, name, err)
