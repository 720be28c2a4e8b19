"""kd.fused_output_layer: the chunked output layer + CE + KD equals the unfused path (and a float64
reference) in loss and in the gradients of hidden states and output weight, at TP=1 and TP=2."""

import pytest

from tests.distributed import run_distributed


@pytest.fixture(scope="module")
def comparisons(tmp_path_factory):
    return run_distributed("tests.workers.fused_kd:compare", 2, tmp_path_factory.mktemp("fused"))


def test_fused_matches_unfused_and_float64(comparisons):
    seen = set()
    for results in comparisons:  # each rank checks its own shard of the weight gradient
        for key, r in results.items():
            seen.add(key)
            assert r["stats_finite"], key
            for name, err in r.items():
                if name != "stats_finite":
                    assert err <= 1e-5, (key, name, err)
    assert len(seen) == 2 * 7


def test_fused_refuses_mismatched_shapes():
    import torch

    from megatron_kd.distill.fused import fused_output_kd

    h, w = torch.randn(4, 8), torch.randn(16, 8)
    with pytest.raises(ValueError, match="vocabulary rows per rank"):
        fused_output_kd(h, w, h, torch.randn(17, 8), torch.zeros(4, dtype=torch.long), torch.ones(4),
                        ce_weight=0.5, kd_weight=0.5)
    with pytest.raises(ValueError, match="token counts differ"):
        fused_output_kd(h, w, torch.randn(5, 8), w, torch.zeros(4, dtype=torch.long), torch.ones(4),
                        ce_weight=0.5, kd_weight=0.5)
