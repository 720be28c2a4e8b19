"""Hugging Face Qwen3-MoE and Mixtral <-> megatron-core MoE: the config mapping (routing
semantics, layer pattern, what cannot be represented), and the converted weights against
transformers' own model (offline, tiny random models built here): logits at TP=1 and (Qwen3-MoE)
at EP=2, the round trip exact, and a Qwen3-MoE directory as a KD run's teacher.checkpoint."""

from __future__ import annotations

import pytest

from megatron_kd.config import load_config
from megatron_kd.config.validate import moe_layers
from megatron_kd.errors import ConfigError
from megatron_kd.models.hf_config import hf_to_model_config, model_config_to_hf
from megatron_kd.models.params import count_parameters
from tests.distributed import run_distributed
from tests.helpers import env_with, mkd, read_metrics

# Qwen/Qwen3-30B-A3B's config.json (the fields conversion reads), as the hub serves it.
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "attention_bias": False,
    "decoder_sparse_step": 1, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
    "mlp_only_layers": [], "moe_intermediate_size": 768, "norm_topk_prob": True, "num_attention_heads": 32,
    "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_sliding_window": False,
    "vocab_size": 151936,
}
# mistralai/Mixtral-8x7B-v0.1's config.json, as the hub serves it.
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32, "num_experts_per_tok": 2,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 32000,
}


def test_qwen3_30b_a3b_is_the_shipped_recipe_and_its_counts():
    hf = hf_to_model_config(QWEN3_30B_A3B, "Qwen3-30B-A3B")
    recipe = load_config("models/qwen3-30b-a3b", purpose="model").model
    for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "kv_channels", "vocab_size", "untie_embeddings_and_output_weights", "qk_layernorm",
                "rotary_base", "norm_epsilon", "moe"):
        assert getattr(hf, key) == getattr(recipe, key), key
    c = count_parameters(recipe)  # Qwen states 30.5B total, 3.3B activated (their figures cut, not rounded)
    assert (c.total, c.active) == (30_532_122_624, 3_353_032_704)
    assert hf.moe.pre_softmax is False and hf.moe.layer_freq == 1  # renormalised top-8 of a softmax


def test_routing_and_layer_pattern_map_both_ways():
    base = dict(QWEN3_30B_A3B, num_hidden_layers=4, num_experts=4, num_experts_per_tok=2)
    # transformers writes num_local_experts; decoder_sparse_step counts layers from 1
    m = hf_to_model_config({**base, "num_experts": None, "num_local_experts": 4, "decoder_sparse_step": 2,
                            "mlp_only_layers": [3], "norm_topk_prob": False}, "x")
    assert m.moe.num_experts == 4 and m.moe.pre_softmax is True and moe_layers(m) == [False, True, False, False]
    back = model_config_to_hf(m, "bf16")
    assert back["mlp_only_layers"] == [0, 2, 3] and back["norm_topk_prob"] is False and back["num_experts"] == 4
    again = hf_to_model_config({**base, **back}, "x")
    assert again.moe == m.moe and moe_layers(again) == moe_layers(m)
    dense = hf_to_model_config({**base, "mlp_only_layers": [0, 1, 2, 3]}, "x")
    assert dense.moe.num_experts == 0 and model_config_to_hf(dense, "fp32")["architectures"] == ["Qwen3ForCausalLM"]


def test_mixtral_maps_both_ways():
    """Mixtral: no QK-norm, every layer sparse, experts of intermediate_size, the top 2 of a
    softmax renormalised (pre_softmax=false); written back as Mixtral because it has no QK-norm."""
    m = hf_to_model_config(MIXTRAL_8X7B, "Mixtral-8x7B")
    assert (m.moe.num_experts, m.moe.router_topk, m.moe.ffn_hidden_size, m.moe.layer_freq) == (8, 2, 14336, 1)
    assert m.moe.pre_softmax is False and m.moe.aux_loss_coeff == 0.02 and not m.qk_layernorm
    assert (m.num_query_groups, m.rotary_base, m.untie_embeddings_and_output_weights) == (8, 1_000_000, True)
    back = model_config_to_hf(m, "bf16")
    assert back["architectures"] == ["MixtralForCausalLM"] and "mlp_only_layers" not in back
    assert hf_to_model_config({**MIXTRAL_8X7B, **back}, "Mixtral-8x7B") == m
    c = count_parameters(m)  # Mistral states 46.7B parameters, 12.9B of them active per token
    assert round(c.total / 1e9, 1) == 46.7 and round(c.active / 1e9, 1) == 12.9


def _replace(m, change: dict):
    import dataclasses

    key, value = next(iter(change.items()))
    if key.startswith("model.moe."):
        return dataclasses.replace(m, moe=dataclasses.replace(m.moe, **{key.split(".")[-1]: value}))
    return dataclasses.replace(m, **{key.split(".")[-1]: value})


@pytest.mark.parametrize("source, change, family, text", [
    (QWEN3_30B_A3B, {"model.moe.shared_expert_ffn_hidden_size": 64}, "Qwen3-MoE", "a shared expert"),
    (QWEN3_30B_A3B, {"model.moe.score_function": "sigmoid"}, "Qwen3-MoE", "score_function=sigmoid"),
    (MIXTRAL_8X7B, {"model.moe.shared_expert_ffn_hidden_size": 64}, "Mixtral", "a shared expert"),
    (MIXTRAL_8X7B, {"model.moe.pre_softmax": True}, "Mixtral", "pre_softmax=true"),
    (MIXTRAL_8X7B, {"model.moe.layer_freq": 2}, "Mixtral", "a dense layer"),
])
def test_what_qwen3_moe_or_mixtral_cannot_hold_is_refused_in_one_line(source, change, family, text):
    m = _replace(hf_to_model_config(source, "x"), change)
    with pytest.raises(ConfigError) as info:
        model_config_to_hf(m, "bf16")
    assert f"cannot be written as Hugging Face {family}" in str(info.value) and text in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("source, change, text", [
    (QWEN3_30B_A3B, {"num_experts_per_tok": 1}, "num_experts_per_tok=1 and norm_topk_prob=true"),
    (QWEN3_30B_A3B, {"use_sliding_window": True, "sliding_window": 4096}, "(use_sliding_window=true"),
    (QWEN3_30B_A3B, {"quantization_config": {"quant_method": "fp8"}}, "quantized checkpoint (fp8"),
    (MIXTRAL_8X7B, {"num_experts_per_tok": 1}, "Mixtral with num_experts_per_tok=1"),
    (MIXTRAL_8X7B, {"router_jitter_noise": 0.1}, "router_jitter_noise=0.1"),
    (MIXTRAL_8X7B, {"sliding_window": 4096}, "(sliding_window=4096"),
])
def test_what_the_import_cannot_represent_is_refused(source, change, text):
    with pytest.raises(ConfigError, match=None) as info:
        hf_to_model_config({**source, **change}, "x")
    assert text in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow  # megatron-core's import: ~4 s in a process that has not loaded it
def test_megatron_routing_is_qwen3_moe_routing():
    """norm_topk_prob=true (softmax over all, top-k, renormalised) is megatron-core's
    pre_softmax=false (top-k logits, softmax over them); false is pre_softmax=true."""
    import torch
    from megatron.core.transformer.moe.moe_utils import topk_routing_with_score_function

    logits = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))  # megatron routes in fp32
    top_value, top_index = torch.topk(torch.softmax(logits, dim=-1), 4, dim=-1)
    for renormalise in (True, False):
        weights = top_value / top_value.sum(-1, keepdim=True) if renormalise else top_value
        probs, routing_map = topk_routing_with_score_function(logits, 4, use_pre_softmax=not renormalise)
        expected = torch.zeros_like(logits).scatter(1, top_index, weights)
        assert torch.equal(routing_map, expected > 0)
        assert torch.allclose(probs, expected, atol=1e-6, rtol=0)


def make_hf_moe(path, family: str = "qwen3_moe", **config):
    """A tiny random Qwen3-MoE or Mixtral (norms made informative: they are ones at init)."""
    import torch
    import transformers

    torch.manual_seed(0)
    shape = dict(vocab_size=250, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 num_experts_per_tok=2, max_position_embeddings=128)
    if family == "mixtral":  # every layer sparse: intermediate_size is the experts'
        shape.update(intermediate_size=32, num_local_experts=4)
        config_cls, model_cls = transformers.MixtralConfig, transformers.MixtralForCausalLM
    else:
        shape.update(intermediate_size=96, moe_intermediate_size=32, num_experts=4)
        config_cls, model_cls = transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM
    model = model_cls(config_cls(**{**shape, **config}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Two Qwen3-MoE directories: A renormalises its top-k, has a dense layer between MoE layers
    and untied embeddings; B does not renormalise and ties them. B is a KD run's teacher (converted
    into $MKD_CACHE on the way); then A and a Mixtral (no QK-norm, GQA, untied) are converted, and
    the three compared and exported."""
    root = tmp_path_factory.mktemp("qwen3moe")
    a = make_hf_moe(root / "hf-a", num_hidden_layers=3, mlp_only_layers=[1], norm_topk_prob=True,
                    tie_word_embeddings=False)
    b = make_hf_moe(root / "hf-b", num_hidden_layers=2, norm_topk_prob=False, tie_word_embeddings=True)
    mixtral = make_hf_moe(root / "hf-mixtral", "mixtral", num_hidden_layers=2)
    env = env_with(MKD_CACHE=str(root / "cache"))
    r = mkd("train", "train/tiny-mock", "model.vocab_size=250", "train.steps=3", "logging.tensorboard=false",
            "checkpoint.save_at_end=false", f"teacher.checkpoint={b}", "kd.alpha=0.5", f"run.dir={root / 'kd'}",
            env=env)
    cached = [d for d in (root / "cache" / "hf").iterdir() if (d / "CONVERTED").is_file()]
    results = run_distributed("tests.workers.convert_moe:convert_compare_export", 1, root / "w1",
                              models=[[str(a), None], [str(b), str(cached[0])], [str(mixtral), None]])
    return {"a": a, "b": b, "kd": read_metrics(root / "kd"), "kd_out": r.stdout, "results": results[0],
            "root": root, "cached": cached}


@pytest.mark.slow
def test_converted_qwen3_moe_matches_transformers_and_round_trips(converted):
    a, b, _ = converted["results"]
    for r in (a, b):
        assert r["max_diff"] < 1e-4, r["max_diff"]
        assert r["unequal"] == [] and r["extra"] == [] and r["class"] == "Qwen3MoeForCausalLM"
    assert a["config"]["mlp_only_layers"] == [1] and a["config"]["norm_topk_prob"] is True
    assert b["config"]["norm_topk_prob"] is False and b["config"]["tie_word_embeddings"] is True
    # the KD run read the directory itself: converted once, its experts teaching the dense student
    assert len(converted["cached"]) == 1 and "done: 3 steps" in converted["kd_out"]
    assert all(m["kd_loss"] > 0 and m["teacher_lm_loss"] > 0 for m in converted["kd"])
    saved = load_config(f"{converted['cached'][0]}/model.yaml", purpose="model").model.moe
    assert saved.num_experts == 4 and saved.pre_softmax is True


@pytest.mark.slow
def test_converted_mixtral_matches_transformers_and_round_trips(converted):
    mixtral = converted["results"][2]
    assert mixtral["max_diff"] < 1e-4, mixtral["max_diff"]
    assert mixtral["unequal"] == [] and mixtral["extra"] == [] and mixtral["class"] == "MixtralForCausalLM"
    assert (mixtral["config"]["num_local_experts"], mixtral["config"]["intermediate_size"]) == (4, 32)
    moe = load_config(f"{mixtral['mcore_dir']}/model.yaml", purpose="model").model.moe
    assert (moe.num_experts, moe.router_topk, moe.pre_softmax, moe.layer_freq) == (4, 2, False, 1)


@pytest.mark.slow
@pytest.mark.parametrize("hf_config, model", [(QWEN3_30B_A3B, "models/qwen3-30b-a3b"), (MIXTRAL_8X7B, None)])
def test_the_counts_are_transformers_own(hf_config, model):
    """Qwen3-30B-A3B (the shipped recipe) and Mixtral-8x7B built by transformers on the meta
    device (no memory): their parameters, and those a token uses (all but the routed experts it is
    not sent to: 120 of 128, 6 of 8), are ours."""
    import torch
    import transformers

    arch = hf_config["architectures"][0]
    config_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    with torch.device("meta"):
        hf = getattr(transformers, arch)(config_cls(**{k: v for k, v in hf_config.items()
                                                        if k not in ("architectures", "model_type", "torch_dtype")}))
    total = sum(p.numel() for p in hf.parameters())
    experts = sum(p.numel() for n, p in hf.named_parameters() if ".mlp.experts." in n)
    ours = load_config(model, purpose="model").model if model else hf_to_model_config(hf_config, arch)
    c, routed = count_parameters(ours), ours.moe.num_experts
    assert (c.total, c.active) == (total, total - experts * (routed - ours.moe.router_topk) // routed)


@pytest.mark.slow
@pytest.mark.multiproc
def test_converted_qwen3_moe_matches_transformers_at_ep2(converted):
    mcore = converted["results"][0]["mcore_dir"]
    results = run_distributed("tests.workers.convert_moe:logits_at", 2, converted["root"] / "w2",
                              hf_dir=str(converted["a"]), mcore_dir=mcore, overrides=["parallel.ep=2"])
    assert [r["ep"] for r in results] == [2, 2]
    assert max(r["max_diff"] for r in results) < 1e-4, results
