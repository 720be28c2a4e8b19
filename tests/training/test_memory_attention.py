"""Activation memory by attention kernel and recompute setting: megatron-core's unfused attention
keeps s x s scores per layer unless `train.recompute: selective` recomputes its core attention;
flash/fused kernels keep none either way. The counts against a hand count on the tiny model and
against what megatron-core's autograd actually keeps (one gloo rank on CPU)."""

from __future__ import annotations

import pytest

from megatron_kd.config import load_config
from megatron_kd.training.memory import attention_score_bytes, estimate
from tests.helpers import mkd_in_process

# models/tiny: 2 layers, hidden 64, 4 heads; 2 sequences of 32 tokens in bf16 at TP=1
TINY = ["precision.dtype=bf16", "train.seq_length=32", "train.micro_batch_size=2"]
LINEAR = 32 * 2 * 64 * 34  # s*b*h*(10 + 24/TP) bytes a layer at 16 bits (Korthikanti et al. 2022)
SCORES = 4 * 32 * 32 * 2 * (4 + 2) + 32 * 32  # fp32 softmax output + bf16 probabilities, the bool causal mask
BUFFER = 4 * 32 * 32 * 2 * 2  # the one bf16 score buffer every layer reuses


def _activations(recompute: str, fused: bool) -> float:
    cfg = load_config("train/tiny-mock", [*TINY, f"train.recompute={recompute}"])
    return estimate(cfg, None, 1, fused_attention=fused).parts["activations"]


def test_scores_counted_by_hand():
    model = load_config("models/tiny", purpose="model").model
    assert attention_score_bytes(model, 32, 2, 1, "bf16") == SCORES == 50_176
    assert attention_score_bytes(model, 32, 2, 1, "fp32") == 4 * 32 * 32 * 2 * 4 + 32 * 32  # one fp32 tensor
    assert attention_score_bytes(model, 32, 2, 2, "bf16") == 2 * 32 * 32 * 2 * 6 + 32 * 32  # half the heads a rank
    model.attention_dropout = 0.1  # the dropout's bf16 output replaces the cast; its 1-byte mask
    assert attention_score_bytes(model, 32, 2, 1, "bf16") == 4 * 32 * 32 * 2 * (4 + 2 + 1) + 32 * 32


def test_selective_recompute_drops_the_unfused_kernels_scores():
    assert _activations("none", fused=False) == 2 * (LINEAR + SCORES) + BUFFER == 395_264
    # core attention recomputed in backward: no layer keeps scores, one layer's live meanwhile
    assert _activations("selective", fused=False) == 2 * LINEAR + SCORES + BUFFER == 345_088
    # full: each layer's input (s*b*h at 2 bytes) kept, one layer recomputed at a time
    assert _activations("full", fused=False) == 2 * 32 * 2 * 64 * 2 + LINEAR + SCORES + BUFFER == 222_208
    # flash/fused attention keeps no scores: selective recompute changes nothing
    assert _activations("none", fused=True) == _activations("selective", fused=True) == 2 * LINEAR == 278_528
    assert _activations("full", fused=True) == 2 * 32 * 2 * 64 * 2 + LINEAR == 155_648


def test_plan_shows_what_selective_recompute_saves(capsys, monkeypatch):
    """`mkd plan` on the paper's student without fp8 and without Transformer Engine: the unfused
    kernel's 32 heads x 8192^2 scores are 12 GiB a layer, and selective recompute drops them."""
    import megatron_kd.models.gpt as gpt

    monkeypatch.setattr(gpt, "have_transformer_engine", lambda: False)

    def activations(*overrides) -> tuple[str, str]:
        rc, out, err = mkd_in_process(capsys, "plan", "train/llama3-1b-paper", "precision.fp8=null", *overrides,
                                      "--gpus", 32)
        assert rc in (0, 5), err
        line = next(x for x in out.splitlines() if x.strip().startswith("activations"))
        return line.split()[1], next(x for x in out.splitlines() if x.strip().startswith("attention:"))

    none, note = activations("train.recompute=none")
    selective, _ = activations("train.recompute=selective")
    assert float(none) - float(selective) == pytest.approx(15 * (32 * 8192 ** 2 * 6 + 8192 ** 2) / 2 ** 30, abs=0.01)
    assert f"activations {none} GiB with recompute none, {selective} GiB with selective" in note
    fp8, note = activations("precision.fp8=hybrid")  # Transformer Engine's kernels: no scores kept
    assert "flash/fused (Transformer Engine) keeps no s x s scores" in note and float(fp8) < float(selective)


@pytest.mark.slow
@pytest.mark.multiproc
def test_unfused_scores_as_megatron_core_keeps_them(tmp_path):
    """The saved tensors shaped s x s of one forward of models/tiny in megatron-core: the count per
    layer without recompute, none under selective recompute."""
    from tests.distributed import run_distributed

    kept = run_distributed("tests.workers.attention_memory:saved_score_bytes", 1, tmp_path,
                           settings=[["none", "bf16"], ["selective", "bf16"]],
                           seq=32, batch=2)[0]
    model = load_config("models/tiny", purpose="model").model
    assert kept["none/bf16"] == 2 * attention_score_bytes(model, 32, 2, 1, "bf16") == 2 * SCORES
    assert kept["selective/bf16"] == 0
