"""Hostile input to the MoE and kd.auto surfaces: a Mixtral config.json or weights file, a
Megatron-LM / Megatron-Bridge architecture and a resumed run's kd_objective that are damaged or
disagree are one line naming the problem (a ConfigError, which mkd prints as its one error
line), never a traceback or a model built from a truncated value."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from megatron_kd.checkpoint.checkpointer import Checkpointer, CheckpointInfo
from megatron_kd.checkpoint.megatron_lm import args_to_model_config, checkpoint_model
from megatron_kd.config import load_config
from megatron_kd.convert.hf import SafetensorsReader
from megatron_kd.distill.objective import KDObjective
from megatron_kd.errors import ConfigError
from megatron_kd.models.hf_config import hf_to_model_config
from tests.helpers import auto_objective

MIXTRAL = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 256, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 128, "hidden_act": "silu",
           "sliding_window": None, "router_jitter_noise": 0.0, "router_aux_loss_coef": 0.02,
           "tie_word_embeddings": False}


def test_a_good_mixtral_config_reads_as_model_moe():
    moe = hf_to_model_config(dict(MIXTRAL), "mixtral").moe
    assert (moe.num_experts, moe.router_topk, moe.ffn_hidden_size, moe.aux_loss_coeff) == (4, 2, 128, 0.02)


@pytest.mark.parametrize("edit, message", [
    ({"num_experts_per_tok": 0}, r"mixtral/config.json: model.moe.router_topk must be in \[1, num_experts=4\], got 0"),
    ({"num_experts_per_tok": 5}, r"router_topk must be in \[1, num_experts=4\], got 5"),
    ({"num_local_experts": None}, "gives no num_local_experts"),
    ({"num_local_experts": 4.5}, "is 4.5, not a whole number"),
    ({"num_local_experts": "4"}, "is '4', not a whole number"),
    ({"router_aux_loss_coef": "x"}, r"mixtral/config.json has a value of the wrong type"),
    ({"router_aux_loss_coef": math.nan}, "aux_loss_coeff must be a finite number"),
    ({"num_hidden_layers": None}, "num_layers = None in mixtral/config.json has the wrong type: expected int"),
    ({"intermediate_size": 128.5}, "ffn_hidden_size = 128.5 in mixtral/config.json has the wrong type"),
])
def test_a_bad_mixtral_config_value_is_one_line(edit, message):
    with pytest.raises(ConfigError, match=message):
        hf_to_model_config({**MIXTRAL, **edit}, "mixtral")


def test_a_config_without_a_key_names_it():
    cfg = dict(MIXTRAL)
    del cfg["num_hidden_layers"]
    with pytest.raises(ConfigError, match="mixtral/config.json has no 'num_hidden_layers'"):
        hf_to_model_config(cfg, "mixtral")


def _weights(tmp_path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(4, 4), "b": torch.ones(2), "model.layers.0.self_attn.rotary_emb.inv_freq":
               torch.ones(2)}, tmp_path / "model.safetensors")
    return tmp_path


@pytest.mark.parametrize("keep", [8, 40])  # inside the header, and past it (tensor data cut)
def test_a_truncated_safetensors_file_is_one_line(tmp_path, keep):
    path = _weights(tmp_path) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ConfigError, match="model.safetensors .*truncated or not a safetensors file; re-download"):
        SafetensorsReader(tmp_path)


def test_tensors_the_config_has_no_place_for_are_named(tmp_path):
    reader = SafetensorsReader(_weights(tmp_path))
    reader.get("a")
    assert reader.unread() == ["b"]  # RoPE's cached frequencies are recomputed, never a disagreement


# --- Megatron-LM's saved args and Megatron-Bridge's run_config.yaml ----------------------------

ARGS = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 256, "num_attention_heads": 4, "padded_vocab_size": 256,
        "max_position_embeddings": 128, "normalization": "RMSNorm", "swiglu": True, "position_embedding_type": "rope",
        "add_bias_linear": False, "num_experts": 4, "moe_router_topk": 2, "moe_ffn_hidden_size": 128}


def test_good_megatron_lm_args_read_as_they_are():
    m = args_to_model_config(dict(ARGS), "ckpt")
    assert (m.hidden_size, m.moe.num_experts, m.moe.ffn_hidden_size) == (64, 4, 128)


@pytest.mark.parametrize("edit, message", [
    ({"hidden_size": 64.5}, r"hidden_size = 64.5 in ckpt's saved args has the wrong type: expected int"),
    ({"hidden_size": "big"}, r"hidden_size = 'big' in ckpt's saved args"),
    ({"hidden_size": [64]}, r"hidden_size = \[64\] in ckpt's saved args"),
    ({"num_layers": True}, r"num_layers = True in ckpt's saved args"),
    ({"hidden_size": -64}, r"ckpt's saved architecture: model.hidden_size must be > 0, got -64"),
    ({"num_experts": 4.5}, r"num_experts = 4.5 in ckpt's saved args"),
    ({"moe_router_topk": "two"}, r"moe_router_topk = 'two'"),
    ({"moe_router_topk": 9}, r"model.moe.router_topk must be in \[1, num_experts=4\], got 9"),
    ({"moe_router_score_function": "tanh"}, r"moe.score_function = 'tanh' in ckpt's saved architecture is not one of"),
    ({"moe_layer_freq": "[1,0]"}, r"model.moe.layer_freq must be"),
    ({"moe_expert_capacity_factor": "x"}, r"moe_expert_capacity_factor = 'x'"),
    ({"rotary_base": math.nan}, r"rotary_base = nan in ckpt's saved args is not a whole number"),
    ({"norm_epsilon": "tiny"}, r"norm_epsilon = 'tiny'"),
])
def test_a_bad_saved_arg_is_one_line_naming_it(edit, message):
    with pytest.raises(ConfigError, match=message):
        args_to_model_config({**ARGS, **edit}, "ckpt")


def _bridge_iter_dir(tmp_path: Path, model: dict) -> Path:
    import torch
    import yaml

    it = tmp_path / "iter_0000007"
    it.mkdir()
    (it / "metadata.json").write_text("{}")
    torch.save({"iteration": 7}, it / "common.pt")
    (it / "run_config.yaml").write_text(yaml.safe_dump({"model": model}))
    return it


BRIDGE = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 256, "num_attention_heads": 4, "vocab_size": 256,
          "normalization": "RMSNorm", "gated_linear_unit": True, "position_embedding_type": "rope",
          "activation_func": {"_target_": "torch.nn.functional.silu"}, "add_bias_linear": False, "seq_length": 128}


@pytest.mark.parametrize("edit, message", [
    ({"vocab_size": "abc"}, r"vocab_size = 'abc' in .*run_config.yaml's saved args has the wrong type"),
    ({"vocab_size": 256.5}, r"vocab_size = 256.5 in .*run_config.yaml's saved args"),
    ({"should_pad_vocab": True, "make_vocab_size_divisible_by": "x"}, r"make_vocab_size_divisible_by = 'x'"),
])
def test_a_bad_bridge_run_config_value_is_one_line(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message):
        checkpoint_model(_bridge_iter_dir(tmp_path, {**BRIDGE, **edit}))


# --- kd.auto's saved objective state ------------------------------------------------------------

LAYOUT = {"tp": 1, "pp": 1, "vpp": 1}


def _restore(state: dict) -> KDObjective:
    objective = auto_objective(None)
    checkpointer = Checkpointer(load_config("train/tiny-mock", ["run.dir=/nonexistent/run", "kd.alpha=0.8",
                                                                "kd.auto.enabled=true"]))
    info = CheckpointInfo(Path("/runs/r/checkpoints/step_0000002"), 2, 8, 256, "periodic", True, state)
    checkpointer._restore_objective(objective, info)
    return objective


def test_a_saved_trend_of_this_layout_is_restored():
    saved = {"parallel": LAYOUT, "world_size": 1, "kd_objective": [auto_objective(0.25).state_dict()]}
    assert _restore(saved).trend.mean == 0.25


@pytest.mark.parametrize("state, message", [
    # two states for the one rank that saved it: not taken as another layout's
    ({"parallel": LAYOUT, "world_size": 1, "kd_objective": [{"auto_trend": {"mean": 0.5}}] * 2},
     "one per rank of the 1"),
    # another layout: every rank checks every entry, so the damaged second one stops them all
    ({"parallel": {"tp": 1, "pp": 2, "vpp": 1}, "world_size": 2,
      "kd_objective": [{"auto_trend": {"mean": 0.5}}, {"auto_trend": {"mean": "x"}}]}, "resume from another one"),
    ({"parallel": LAYOUT, "world_size": 1, "kd_objective": [[0.5]]}, "must be {'auto_trend'"),
    ({"parallel": LAYOUT, "world_size": 1, "kd_objective": [{"auto_trend": {"mean": 0.5}, "extra": 1}]},
     "must be {'auto_trend'"),
    ({"parallel": LAYOUT, "world_size": 1, "kd_objective": [{"auto_trend": {"mean": math.inf}}]}, "a finite number"),
    ({"parallel": LAYOUT, "world_size": 1, "kd_objective": []}, "is damaged"),
])
def test_a_damaged_kd_objective_is_refused_in_one_line(state, message):
    with pytest.raises(ConfigError, match=message):
        _restore(json.loads(json.dumps(state)))


# --- model.moe against the parallel layout -------------------------------------------------------

MOE = ["model.moe.num_experts=4", "model.moe.ffn_hidden_size=128"]


@pytest.mark.parametrize("overrides, message", [
    (["model.moe.num_experts=1000000000000"], r"model.moe.num_experts must be in \[0, 65536\]"),
    ([*MOE, "parallel.tp=2", "parallel.sequence_parallel=true", "parallel.etp=3"],
     r"model.moe.ffn_hidden_size=128 \(an expert's inner size\) is not divisible by the expert tensor-parallel size 3"),
    ([*MOE, "model.moe.ffn_hidden_size=null", "parallel.etp=3"], r"model.moe.ffn_hidden_size=256 .* size 3"),
    ([*MOE, "model.moe.shared_expert_ffn_hidden_size=33", "parallel.tp=2", "parallel.sequence_parallel=true"],
     r"model.moe.shared_expert_ffn_hidden_size=33 is not divisible by parallel.tp=2"),
])
def test_moe_sizes_the_layout_cannot_split_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("train/tiny-mock", overrides)


def test_moe_sizes_the_layout_splits_load():
    cfg = load_config("train/tiny-mock", [*MOE, "model.moe.shared_expert_ffn_hidden_size=64", "parallel.tp=2",
                                          "parallel.sequence_parallel=true", "parallel.etp=1"])
    assert (cfg.parallel.etp, cfg.model.moe.shared_expert_ffn_hidden_size) == (1, 64)


def test_a_shared_expert_export_does_not_suggest_qwen3_moe():
    from megatron_kd.models.hf_config import model_config_to_hf

    cfg = load_config("train/tiny-mock", [*MOE, "model.moe.shared_expert_ffn_hidden_size=64"])
    with pytest.raises(ConfigError, match=r"a shared expert .*Mixtral has none\)$"):
        model_config_to_hf(cfg.model, "fp32")
    pre_softmax = load_config("train/tiny-mock", [*MOE, "model.moe.pre_softmax=true"])
    with pytest.raises(ConfigError, match=r"pre_softmax=true .*written as Qwen3-MoE$"):
        model_config_to_hf(pre_softmax.model, "fp32")


def test_architectures_that_are_not_a_list_of_names_are_one_line(tmp_path):
    from megatron_kd.models.hf_config import read_hf_config

    (tmp_path / "config.json").write_text(json.dumps({**MIXTRAL, "architectures": 5}))
    with pytest.raises(ConfigError, match="unsupported Hugging Face architecture 5"):
        read_hf_config(tmp_path)


def test_a_weight_index_pointing_outside_its_directory_is_refused(tmp_path):
    _weights(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../model.safetensors"}}))
    with pytest.raises(ConfigError, match=r"maps tensors to '../model.safetensors', not a file name in"):
        SafetensorsReader(tmp_path)


@pytest.mark.parametrize("tau", ["-1", "0", "nan"])
def test_kd_auto_tau_out_of_range_is_refused_even_while_kd_auto_is_off(tau):
    with pytest.raises(ConfigError, match=r"kd.auto.tau must be (> 0 and )?(a )?finite"):
        load_config("train/tiny-mock", [f"kd.auto.tau={tau}"])
