"""The unigram teacher (teacher.unigram, the smoothing control of study v3): its distribution
is the corpus's add-one token frequencies, its KD run is the same at TP=1 and TP=2, and at
initialisation (a near-uniform student) its KD term is KL(unigram || uniform)."""

import math

import numpy as np
import pytest

from megatron_kd.config import load_config
from megatron_kd.errors import ConfigError
from tests.conftest import corpus_overrides
from tests.helpers import mkd, read_metrics


def test_the_distribution_is_the_corpus_add_one_frequencies(text_corpus):
    from megatron_kd.distill.unigram import unigram_log_probs, unigram_loss

    train, valid = text_corpus["train"], text_corpus["valid"]
    tokens = {p: np.fromfile(f"{p}.bin", dtype=np.uint16).astype(np.int64) for p in (train, valid)}
    expect = {p: (np.bincount(t, minlength=512) + 1) / (t.size + 512) for p, t in tokens.items()}
    logp = unigram_log_probs([train], None, 512)
    assert np.allclose(np.exp(logp), expect[train], rtol=1e-12) and abs(np.exp(logp).sum() - 1) < 1e-12
    blend = unigram_log_probs([train, valid], [3.0, 1.0], 512)  # each prefix's distribution, weighted
    assert np.allclose(np.exp(blend), 0.75 * expect[train] + 0.25 * expect[valid], rtol=1e-12)
    pooled = unigram_log_probs([train, valid], None, 512)  # a blend by size: the tokens pooled
    both = np.concatenate([tokens[train], tokens[valid]])
    assert np.allclose(np.exp(pooled), (np.bincount(both, minlength=512) + 1) / (both.size + 512), rtol=1e-12)
    assert unigram_loss(logp, valid) == pytest.approx(-np.log(expect[train][tokens[valid]]).mean(), rel=1e-12)
    with pytest.raises(ConfigError, match="token ids outside the model's vocabulary"):
        unigram_log_probs([train], None, 100)


def test_unigram_teacher_refuses_what_it_cannot_be(text_corpus, tmp_path):
    ov = corpus_overrides(text_corpus) + ["teacher.unigram=true", f"run.dir={tmp_path}/r"]
    for extra, text in (([f"teacher.checkpoint={tmp_path}"], "unset teacher.checkpoint"),
                        (["data.mock=true"], "set data.mock=false"),
                        (["kd.fused_output_layer=true"], "kd.fused_output_layer=false")):
        with pytest.raises(ConfigError, match=text):
            load_config("train/tiny-mock", ov + extra)


@pytest.mark.parametrize("top_k, alpha", [(8, 0.5), (47, 1.0), (1, 0.2)])
def test_unigram_top_k_row_route_equals_the_dense_online_route(top_k, alpha):
    """The unigram teacher's sparse route (its one top-k row, broadcast: make_loss_func chooses it
    at T = 1 for kd.top_k) gives the dense online route's loss, reports and gradient: 48 real
    tokens in 64 padded columns, masked tokens, huge student logits, ties in the unigram's counts
    (add-one zeros)."""
    import torch

    from megatron_kd.config.schema import KDConfig
    from megatron_kd.distill.cache import PADDING_LOGIT
    from megatron_kd.distill.objective import KDObjective, OnlineLogits, UnigramTeacher, choose_route, make_loss_func

    g = torch.Generator().manual_seed(top_k)
    counts = torch.randint(0, 6, (48,), generator=g).double()  # many equal counts: ties
    logp = torch.log((counts + 1) / (counts.sum() + 48)).float()
    kd = KDObjective.from_config(KDConfig(alpha=alpha, top_k=top_k, other_bucket=True, teacher_metrics=True), 48)
    s, b, width = 6, 3, 64
    zs = torch.randn(s, b, width, generator=g) * 4
    zs[0, 0, 5] = 50.0  # a huge logit (the other mass e^-50 stays above both routes' floors)
    labels = torch.randint(0, 48, (s, b), generator=g)
    mask = (torch.rand(s, b, generator=g) > 0.3).float()
    unigram = UnigramTeacher(logp)
    assert choose_route(kd, alpha, 1.0, unigram) == "sparse" and choose_route(kd, alpha, 2.0, unigram) == "one_pass"
    dense = torch.full((width,), PADDING_LOGIT)
    dense[:48] = logp
    results = []
    for signal in (unigram, unigram, OnlineLogits(dense.expand(s, b, width).contiguous())):
        z = zs.clone().requires_grad_(True)
        total, count, reports = make_loss_func(kd, alpha, 1.0, labels, mask, signal, None)(z)
        (2.0 * total).backward()
        results.append((total.detach(), reports, z.grad))
    # the row is made once per run (per padded vocabulary and device), at the first step
    assert len(kd.unigram_rows) == 1 and next(iter(kd.unigram_rows.values()))[0]["ids"].shape == (top_k,)
    (t_sparse, r_sparse, g_sparse), _, (t_dense, r_dense, g_dense) = results
    assert float(t_sparse) == pytest.approx(float(t_dense), rel=1e-5, abs=1e-5)
    assert set(r_sparse) == set(r_dense)
    for key in r_dense:
        assert float(r_sparse[key][0]) == pytest.approx(float(r_dense[key][0]), rel=1e-5, abs=1e-5), key
    assert (g_sparse - g_dense).abs().max().item() < 1e-5
    assert g_sparse[mask == 0].abs().max().item() == 0.0  # (padding columns: CE's softmax counts them)


@pytest.mark.slow
@pytest.mark.multiproc
def test_unigram_kd_run_is_layout_free_and_starts_at_kl_to_uniform(text_corpus, tmp_path):
    """The route the study runs (kd.top_k with the other bucket: the unigram's one top-k row) at
    TP=1 and TP=2; its first KD loss is the truncated KL from the unigram to the uniform student."""
    from megatron_kd.distill.unigram import unigram_log_probs

    common = ["train", "train/tiny-mock", *corpus_overrides(text_corpus), "train.global_batch_size=8",
              "train.micro_batch_size=4", "train.seq_length=32", "logging.eval_samples=16", "train.steps=3",
              "teacher.unigram=true", "kd.alpha=1.0", "kd.top_k=16", "kd.other_bucket=true",
              "logging.log_interval=1"]
    mkd(*common, f"run.dir={tmp_path / 'tp1'}")
    mkd(*common, f"run.dir={tmp_path / 'tp2'}", "parallel.tp=2", "--nproc", "2")
    a, b = read_metrics(tmp_path / "tp1"), read_metrics(tmp_path / "tp2")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert abs(x["kd_loss"] - y["kd_loss"]) < 1e-5 and abs(x["loss"] - y["loss"]) < 1e-5
    p = np.exp(unigram_log_probs([text_corpus["train"]], None, 512))
    q = np.sort(p)[::-1][:16]
    q_other = 1.0 - q.sum()
    truncated_kl_to_uniform = float((q * np.log(q * 512)).sum()) + q_other * math.log(q_other / (496 / 512))
    assert abs(a[0]["kd_loss"] - truncated_kl_to_uniform) < 0.05, (a[0]["kd_loss"], truncated_kl_to_uniform)
    assert a[-1]["kd_loss"] < a[0]["kd_loss"]  # the student moves towards the unigram
