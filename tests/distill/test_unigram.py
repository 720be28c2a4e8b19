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


@pytest.mark.slow
@pytest.mark.multiproc
def test_unigram_kd_run_is_layout_free_and_starts_at_kl_to_uniform(text_corpus, tmp_path):
    from megatron_kd.distill.unigram import unigram_log_probs

    common = ["train", "train/tiny-mock", *corpus_overrides(text_corpus), "train.global_batch_size=8",
              "train.micro_batch_size=4", "train.seq_length=32", "logging.eval_samples=16", "train.steps=3",
              "teacher.unigram=true", "kd.alpha=1.0", "logging.log_interval=1"]
    mkd(*common, f"run.dir={tmp_path / 'tp1'}")
    mkd(*common, f"run.dir={tmp_path / 'tp2'}", "parallel.tp=2", "--nproc", "2")
    a, b = read_metrics(tmp_path / "tp1"), read_metrics(tmp_path / "tp2")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert abs(x["kd_loss"] - y["kd_loss"]) < 1e-5 and abs(x["loss"] - y["loss"]) < 1e-5
    p = np.exp(unigram_log_probs([text_corpus["train"]], None, 512))
    kl_to_uniform = math.log(512) + float((p * np.log(p)).sum())
    assert abs(a[0]["kd_loss"] - kl_to_uniform) < 0.05, (a[0]["kd_loss"], kl_to_uniform)
    assert a[-1]["kd_loss"] < a[0]["kd_loss"]  # the student moves towards the unigram
