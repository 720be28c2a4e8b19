"""Multi-process gloo tests: the same weights give the same function at any TP/PP layout."""

import pytest

from tests.conftest import corpus_overrides
from tests.distributed import run_distributed

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]
TOL = 1e-5


def test_tp2_and_pp2_match_tp1(tmp_path):
    results = run_distributed("tests.workers.parallel_parity:tp_pp_forward_backward", 2, tmp_path)
    r = results[0]
    assert r["padded_vocab"] == 256  # 250 padded to a multiple of 64 x tp
    assert r["tp2_logits_max_diff"] < TOL, r
    assert r["tp2_loss_diff"] < TOL * 100, r  # a sum over 32 tokens of ~5.5 nats
    assert r["tp2_grad_max_diff"] < TOL, r
    assert r["pp2_loss_diff"] < TOL * 100, r
    assert r["pp2_grad_max_diff"] < TOL, r
    # Each pipeline stage holds only part of the model.
    assert results[0]["pp2_stage_params"] != results[1]["pp2_stage_params"]


def test_tp2_pp2_training_matches_tp1(tmp_path, text_corpus):
    """Four ranks on real text: TP=2 x PP=2 with sequence parallelism and QK-norm trains (DDP,
    optimizer, pipeline schedule, TP-summed norm gradients) with the same loss trajectory and
    validation loss as TP=1 x DP=4 from the same weights and data."""
    results = run_distributed("tests.workers.parallel_parity:training_matches_across_layouts", 4,
                              tmp_path, tp=2, pp=2, steps=3, sequence_parallel=True,
                              qk_layernorm=True, data=corpus_overrides(text_corpus))
    ref, par = results[0]["reference"], results[0]["parallel"]
    ref_val, par_val = results[0]["reference_valid"]["indomain"], results[0]["parallel_valid"]["indomain"]
    assert abs(ref_val - par_val) < 1e-5, (ref_val, par_val)
    assert len(ref) == len(par) == 3
    assert ref[-1] < ref[0]  # it learns
    for a, b in zip(ref, par):
        assert abs(a - b) < 1e-5, (ref, par)
    assert all(r == results[0] for r in results)  # every rank reports the same losses
