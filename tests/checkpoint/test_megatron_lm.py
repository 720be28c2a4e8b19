"""Megatron-LM / Megatron-Bridge checkpoints: the saved architecture mapped onto a ModelConfig,
what cannot be represented refused in one line, and a round trip through checkpoints written by
Megatron-LM's own save_checkpoint (megatron/training, which the megatron-core 0.19.2
distribution ships) at TP=2: tests/workers/megatron_lm.py says what it adapts to this machine.
"""

from __future__ import annotations

import argparse

import pytest
import torch

from megatron_kd.checkpoint import megatron_lm
from megatron_kd.errors import ConfigError
from tests.distributed import run_distributed

LLAMA = dict(num_layers=4, hidden_size=64, ffn_hidden_size=176, num_attention_heads=8, group_query_attention=True,
             num_query_groups=2, kv_channels=8, padded_vocab_size=384, max_position_embeddings=128, rotary_base=500000,
             normalization="RMSNorm", swiglu=True, position_embedding_type="rope", add_bias_linear=False,
             untie_embeddings_and_output_weights=True, norm_epsilon=1e-6, bf16=True)


def test_llama_args_map_onto_a_model_config_and_back():
    m = megatron_lm.args_to_model_config(dict(LLAMA), "ckpt")
    assert (m.num_layers, m.num_query_groups, m.kv_channels) == (4, 2, None)
    assert (m.padded_vocab_size, m.vocab_size) == (384, 384)
    assert m.rotary_base == 500000 and m.norm_epsilon == 1e-6 and m.untie_embeddings_and_output_weights
    assert m.moe.num_experts == 0
    back = megatron_lm.model_config_to_args(m, "bf16", 7, 70)
    assert megatron_lm.args_to_model_config(vars(back), "back") == m
    assert (back.iteration, back.consumed_train_samples, back.ckpt_format, back.bf16) == (7, 70, "torch_dist", True)


def test_moe_args_map_onto_model_moe():
    args = dict(LLAMA, num_experts=8, moe_router_topk=2, moe_ffn_hidden_size=32, moe_layer_freq=[0, 1, 1, 1],
                moe_shared_expert_intermediate_size=64, moe_router_score_function="sigmoid",
                moe_router_pre_softmax=False, moe_token_dispatcher_type="flex", moe_aux_loss_coeff=0.01)
    moe = megatron_lm.args_to_model_config(args, "ckpt").moe
    assert (moe.num_experts, moe.router_topk, moe.ffn_hidden_size, moe.layer_freq) == (8, 2, 32, [0, 1, 1, 1])
    assert (moe.shared_expert_ffn_hidden_size, moe.score_function, moe.token_dispatcher) == (64, "sigmoid", "alltoall")


@pytest.mark.parametrize("change, named", [
    ({"normalization": "LayerNorm"}, "LayerNorm instead of RMSNorm"),
    ({"swiglu": False}, "without SwiGLU"),
    ({"position_embedding_type": "learned_absolute"}, "other than RoPE"),
    ({"add_bias_linear": True}, "biases on the linear layers"),
    ({"multi_latent_attention": True}, "(MLA)"),
    ({"rotary_percent": 0.5}, "partial RoPE"),
    ({"mtp_num_layers": 1}, "multi-token-prediction"),
])
def test_what_a_model_config_cannot_represent_is_one_line(change, named):
    with pytest.raises(ConfigError) as exc:
        megatron_lm.args_to_model_config(dict(LLAMA, **change), "ckpt/iter_0000010")
    msg = str(exc.value)
    assert named in msg and "ckpt/iter_0000010" in msg and "\n" not in msg


def test_megatron_lm_defaults_are_not_llama():
    """Args without normalization/swiglu/bias fields have Megatron-LM's defaults (GPT-2 style)."""
    args = {k: v for k, v in LLAMA.items() if k not in ("normalization", "add_bias_linear")}
    with pytest.raises(ConfigError, match="LayerNorm instead of RMSNorm; biases on the linear layers"):
        megatron_lm.args_to_model_config(args, "ckpt")


def _common(tmp_path, state):
    it = tmp_path / "save" / "iter_0000010"
    it.mkdir(parents=True)
    (it / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    torch.save(state, it / "common.pt")
    (tmp_path / "save" / megatron_lm.TRACKER).write_text("10")
    return it


class Hostile:
    def __reduce__(self):
        return (print, ("ran",))


def test_saved_args_are_read_from_the_tracker_and_anything_else_is_refused(tmp_path):
    it = _common(tmp_path, {"args": argparse.Namespace(**LLAMA, params_dtype=torch.bfloat16), "iteration": 10})
    assert megatron_lm.is_megatron_lm_dir(tmp_path / "save") and megatron_lm.iteration_dir(tmp_path / "save") == it
    assert megatron_lm.checkpoint_model(it).hidden_size == 64
    torch.save({"args": Hostile(), "iteration": 10}, it / "common.pt")
    refused = r"refused to load .*common.pt: .*Unsupported global: GLOBAL print\); nothing in it was run"
    with pytest.raises(ConfigError, match=refused):
        megatron_lm.saved_args(it)
    (tmp_path / "save" / megatron_lm.TRACKER).write_text("20")
    with pytest.raises(ConfigError, match="names iter_0000020, which is not a directory"):
        megatron_lm.iteration_dir(tmp_path / "save")


def test_bridge_run_config_and_teacher_model_fallback(tmp_path):
    it = _common(tmp_path, {"iteration": 10})
    with pytest.raises(ConfigError, match="neither saved args nor run_config.yaml; give its architecture"):
        megatron_lm.checkpoint_model(it)
    (it / "run_config.yaml").write_text(
        "model:\n  num_layers: 2\n  hidden_size: 32\n  ffn_hidden_size: 64\n  num_attention_heads: 4\n"
        "  num_query_groups: 2\n  kv_channels: 8\n  padded_vocab_size: 256\n  seq_length: 64\n"
        "  normalization: RMSNorm\n  gated_linear_unit: true\n  activation_func: {_target_: torch.nn.functional.silu}\n"
        "  position_embedding_type: rope\n  add_bias_linear: false\n  share_embeddings_and_output_weights: false\n"
        "  layernorm_epsilon: 1.0e-06\n")
    m = megatron_lm.checkpoint_model(it)
    assert (m.num_layers, m.num_query_groups, m.max_position_embeddings, m.norm_epsilon) == (2, 2, 64, 1e-6)
    assert m.untie_embeddings_and_output_weights


def test_transformer_engine_names_are_chosen_per_layer():
    """A MoE layer saved with Transformer Engine keeps its pre-MLP norm apart; dense layers fuse it."""
    from types import SimpleNamespace as NS

    fused, apart = "decoder.layers.mlp.linear_fc1.layer_norm_weight", "decoder.layers.pre_mlp_layernorm.weight"
    chunk = lambda layer: NS(offsets=(layer, 0), sizes=(1, 32))  # noqa: E731
    saved = {fused: [chunk(0)], apart: [chunk(1)]}
    ours = [NS(key=fused, global_offset=(0, 0)), NS(key=fused, global_offset=(1, 0))]
    assert megatron_lm.use_te_names(ours, saved) == 1
    assert [s.key for s in ours] == [fused, apart]


@pytest.mark.slow
@pytest.mark.multiproc
def test_tp2_megatron_lm_checkpoints_teach_at_tp1_and_are_written_back(tmp_path, monkeypatch):
    """A dense and an MoE model (layer 0 dense, layer 1 experts split over the TP ranks), in the
    same processes: their starts are most of the time."""
    monkeypatch.setenv("MKD_CACHE", str(tmp_path / "cache"))
    saves = {"dense": str(tmp_path / "mlm-dense"), "moe": str(tmp_path / "mlm-moe")}
    saved = run_distributed("tests.workers.megatron_lm:save_with_megatron_lm", 2, tmp_path / "w2",
                            save_dirs=saves, tp=2, iteration=7)[0]
    results = run_distributed("tests.workers.megatron_lm:load_as_teacher_and_export", 1, tmp_path / "w1",
                              save_dirs=saves, run_dir=str(tmp_path / "run"))[0]
    for kind, r in results.items():
        assert r["teacher"] == {"num_layers": 2, "num_query_groups": 2, "vocab_size": 250, "padded_vocab_size": 256,
                                "kv_channels": None, "untie_embeddings_and_output_weights": True}, kind
        assert r["moe"] == ([4, 2, [0, 1]] if kind == "moe" else [0, 2, 1])
        assert (r["step"], r["tracker"], r["megatron_lm_iteration"]) == (7, "7", 7)
        at_tp2, loaded = torch.tensor(saved[kind]), torch.tensor(r["loaded"])
        assert (loaded - at_tp2).abs().max() < 1e-5, kind  # TP=1 sums in another order than TP=2
        assert torch.equal(torch.tensor(r["exported"]), loaded), kind  # written back, read by Megatron-LM
