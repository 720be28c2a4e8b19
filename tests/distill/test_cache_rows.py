"""A teacher cache's rows (distill.cache.teacher_rows) against a float64 reference, with and
without padding columns (the unpadded vocabulary reuses the label's normaliser: its own branch),
huge logits, ties at the top-k boundary, and batches of several row blocks (a last one partial)."""

import math

import pytest
import torch

from megatron_kd.distill.cache import teacher_rows


def _reference(z: torch.Tensor, labels: torch.Tensor, vocab: int, k: int) -> dict:
    z = z.double().reshape(-1, z.shape[-1])
    lab = labels.reshape(-1)
    label_logp = torch.log_softmax(z, -1).gather(1, lab[:, None])[:, 0]  # megatron-core's CE: every column
    logp = torch.log_softmax(z[:, :vocab], -1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    order = torch.argsort(logp, dim=-1, descending=True, stable=True)[:, :k]  # ties: the lowest id first
    rest = p.sum(-1) - p.gather(1, order).sum(-1)
    return {"label_logp": label_logp, "entropy": entropy, "ids": order, "logp": logp.gather(1, order),
            "other_logp": torch.log(rest)}


@pytest.mark.parametrize("vocab,width,s", [(64, 64, 5), (50, 64, 5), (2000, 2048, 550)])  # 2048: 512-row blocks
@pytest.mark.parametrize("huge", [False, True])
def test_rows_match_float64_reference(vocab, width, s, huge):
    g = torch.Generator().manual_seed(vocab + huge)
    b, k = 3, 8
    z = torch.randn(s, b, width, generator=g) * 3
    z[0, 0, :12] = 2.5  # a tie across the top-k boundary
    if huge:
        z[1, 1, :vocab] *= 60.0
        z[2, :, vocab:] = 900.0  # padding columns far above the real ones (counted by the label's CE only)
    labels = torch.randint(0, vocab, (s, b), generator=g)
    rows = teacher_rows(z, labels, vocab, k, None)
    ref = _reference(z, labels, vocab, k)
    for key, want in ref.items():
        got = rows[key].transpose(0, 1).reshape(want.shape[0], *rows[key].shape[2:])  # [b, s] -> tokens
        if key == "ids":
            assert torch.equal(got.long(), want), key
            continue
        finite = torch.isfinite(want)
        assert torch.equal(torch.isfinite(got), finite), key
        assert torch.allclose(got.double()[finite], want[finite], rtol=1e-5, atol=1e-4 if huge else 1e-5), key
    assert math.isclose(rows["entropy"].min().item(), max(0.0, ref["entropy"].min().item()), abs_tol=1e-4)


@pytest.mark.parametrize("vocab", [256, 250])  # unpadded and padded
@pytest.mark.parametrize("top_k", [8, None])
def test_blocks_give_the_bytes_of_one_block(monkeypatch, vocab, top_k):
    """The cache's bytes do not depend on the block size: 70 rows in 4 blocks of 17-18 (at least
    16 each) against one block of all 70."""
    import megatron_kd.distill.cache as cache

    g = torch.Generator().manual_seed(vocab)
    z = torch.randn(35, 2, 256, generator=g) * 4
    labels = torch.randint(0, vocab, (35, 2), generator=g)
    whole = teacher_rows(z, labels, vocab, top_k, None)
    monkeypatch.setattr(cache, "ROW_BLOCK_LOGITS", 16 * 256)
    blocked = teacher_rows(z, labels, vocab, top_k, None)
    assert sorted(blocked) == sorted(whole)
    for key in whole:
        assert torch.equal(blocked[key], whole[key]), key


def test_empty_batch_gives_empty_rows():
    z, labels = torch.randn(0, 2, 64), torch.zeros(0, 2, dtype=torch.long)
    for generator in (None, torch.Generator().manual_seed(0)):
        rows = teacher_rows(z, labels, 60, 8, None, sample_generator=generator)
        assert rows["ids"].shape == (2, 0, 8) and rows["label_logp"].shape == (2, 0)
