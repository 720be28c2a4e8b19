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


def test_without_args_or_run_config_the_architecture_is_asked_for(tmp_path):
    it = _common(tmp_path, {"iteration": 10})
    with pytest.raises(ConfigError, match="neither saved args nor run_config.yaml; give its architecture"):
        megatron_lm.checkpoint_model(it)


def _megatron_training():
    """Megatron-LM's config serialisation (megatron/training, shipped with megatron-core), importable
    on Python 3.11 once typing.override (3.12) is there."""
    import typing

    typing.override = getattr(typing, "override", lambda f: f)
    from megatron.training.config import container, training_config, yaml_utils
    from megatron.training.models import gpt

    return container.ConfigContainerBase, training_config, yaml_utils.safe_yaml_representers, gpt.GPTModelConfig


def _bridge_run_config(model: dict) -> str:
    """A run_config.yaml as Megatron-Bridge's save_checkpoint writes it (ConfigContainer.to_yaml):
    Megatron-LM's ConfigContainerBase, which Bridge's container extends, turns each section into a
    mapping (dataclasses with their `_target_`, a GPT model config through its as_dict), dumped
    under Megatron-LM's YAML representers (functions, partials, enums and dtypes as `_target_`
    mappings). Bridge's own classes need Transformer Engine and cannot be imported here."""
    import yaml

    container, training_config, representers, _ = _megatron_training()
    sections = {"checkpoint": training_config.CheckpointConfig(save="/ckpts/run", ckpt_format="torch_dist"),
                "train": training_config.TrainingConfig()}
    doc = {"_target_": "megatron.bridge.training.config.ConfigContainer", "model": model,
           **{name: container._convert_value_to_dict(section) for name, section in sections.items()}}
    with representers():
        return yaml.safe_dump(doc, default_flow_style=False)


def _transformer_config(**fields):
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    base = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                kv_channels=16, normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu,
                add_bias_linear=False, layernorm_epsilon=1e-6, attention_dropout=0.0, hidden_dropout=0.0)
    return TransformerConfig, {**base, **fields}


# A Bridge GPT model provider's own fields, beside TransformerConfig's (as its run_config.yaml names them)
PROVIDER = dict(vocab_size=250, make_vocab_size_divisible_by=128, should_pad_vocab=False, seq_length=64,
                share_embeddings_and_output_weights=True, position_embedding_type="rope", rotary_base=10000.0,
                rotary_percent=1.0)


def _provider(target: str, provider: dict, **transformer_fields) -> dict:
    """Bridge's model provider as run_config.yaml holds it: a TransformerConfig subclass, serialised
    as a dataclass, its own fields (PROVIDER and `provider`) at the level of TransformerConfig's."""
    import dataclasses

    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    container, *_ = _megatron_training()
    config_cls, transformer = _transformer_config(**transformer_fields)
    own = {"transformer_layer_spec": get_gpt_layer_local_spec, **PROVIDER, **provider}
    cls = dataclasses.make_dataclass("Provider", [(k, object, dataclasses.field(default=v)) for k, v in own.items()],
                                     bases=(config_cls,))
    return {**container._convert_value_to_dict(cls(**transformer)), "_target_": target}


@pytest.mark.slow  # megatron/training's import, ~5 s in a fresh process
def test_run_config_yaml_as_megatron_bridge_writes_it(tmp_path):
    """Both shapes Bridge writes: a Llama 3.1 provider (scaled RoPE, tied embeddings, a vocabulary
    not padded), a Qwen3-MoE-like provider (experts, QK-norm, should_pad_vocab at TP=2) and a GPT
    model config (its transformer nested); Megatron-LM's own GPT model config, which leaves the
    activation function out, is refused in one line unless the recipe is given."""
    import dataclasses

    import yaml

    def model_of(section: dict, name: str):
        it = _common(tmp_path / name, {"iteration": 10})
        (it / "run_config.yaml").write_text(_bridge_run_config(section))
        return megatron_lm.checkpoint_model(megatron_lm.iteration_dir(tmp_path / name / "save"))

    llama = model_of(_provider("megatron.bridge.models.llama.llama_provider.Llama31ModelProvider",
                               dict(rotary_base=500000.0, scale_factor=32.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, old_context_len=8192)), "llama")
    assert (llama.num_layers, llama.hidden_size, llama.num_query_groups, llama.kv_channels) == (2, 64, 2, None)
    assert (llama.vocab_size, llama.padded_vocab_size, llama.max_position_embeddings) == (250, 250, 64)
    assert (llama.rotary_base, llama.rope_scaling, llama.rope_scaling_factor) == (500000, True, 32.0)
    assert not llama.untie_embeddings_and_output_weights and not llama.qk_layernorm and llama.norm_epsilon == 1e-6
    assert llama.moe.num_experts == 0

    moe = model_of(_provider("megatron.bridge.models.qwen.qwen_provider.Qwen3MoEModelProvider",
                             dict(should_pad_vocab=True, share_embeddings_and_output_weights=False),
                             tensor_model_parallel_size=2, sequence_parallel=True, num_moe_experts=4,
                             moe_router_topk=2, moe_ffn_hidden_size=32, qk_layernorm=True, moe_aux_loss_coeff=0.001,
                             moe_token_dispatcher_type="alltoall"), "moe")
    assert (moe.padded_vocab_size, moe.qk_layernorm, moe.untie_embeddings_and_output_weights) == (256, True, True)
    assert (moe.moe.num_experts, moe.moe.router_topk, moe.moe.ffn_hidden_size, moe.moe.layer_freq) == (4, 2, 32, 1)
    assert (moe.moe.pre_softmax, moe.moe.aux_loss_coeff, moe.rope_scaling) == (False, 0.001, False)

    container, _, _, gpt_model_config = _megatron_training()
    config_cls, transformer = _transformer_config(num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32)
    plain = container._convert_value_to_dict(gpt_model_config(
        transformer=config_cls(**transformer), vocab_size=250, seq_length=64, position_embedding_type="rope",
        rotary_base=1000000, share_embeddings_and_output_weights=False))
    assert "activation_func" not in plain["transformer"]  # callables are left out: the activation is unknown
    # Bridge's GPT model config writes the activation by name (its as_dict adds it to Megatron-LM's)
    bridge = yaml.safe_load(_bridge_run_config(plain))["model"]
    bridge["_target_"] = "megatron.bridge.models.gpt.model_config.BridgeGPTModelConfig"
    bridge["transformer"]["activation_func"] = "silu"
    nested = model_of(bridge, "nested")
    assert (nested.num_layers, nested.padded_vocab_size, nested.rotary_base) == (2, 250, 1000000)
    assert nested.untie_embeddings_and_output_weights and nested.norm_epsilon == 1e-6
    assert (nested.moe.num_experts, nested.moe.router_topk, nested.moe.ffn_hidden_size) == (4, 2, 32)
    # without the activation: one line asking for the recipe, which is then checked against the rest
    with pytest.raises(ConfigError, match=r"does not record the model's activation function") as info:
        model_of(plain, "plain")
    assert "\n" not in str(info.value)
    it = megatron_lm.iteration_dir(tmp_path / "plain" / "save")
    assert megatron_lm.checkpoint_model(it, nested) == nested
    with pytest.raises(ConfigError, match="another architecture than the recipe given .num_layers: recipe 3"):
        megatron_lm.checkpoint_model(it, dataclasses.replace(nested, num_layers=3))


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
    # Megatron-LM trains on from the exports: its setup_model_and_optimizer loads each (DDP, Adam, LR
    # schedule; --no-load-optim --no-load-rng) at the saved iteration, and its train_step's loss is
    # the exported weights' own on the same batches; the update is taken and moves every parameter
    exported = {kind: str(tmp_path / "w1" / f"exported-{kind}") for kind in saves}
    trained = run_distributed("tests.workers.megatron_lm_train:train_on_from_export", 1, tmp_path / "w3",
                              exported=exported)[0]
    for kind, t in trained.items():
        assert (t["iteration"], t["skipped"], t["moved"]) == (7, 0, t["parameters"]), (kind, t)
        assert abs(t["loss"] - t["exported_loss"]) < 1e-5, (kind, t)
