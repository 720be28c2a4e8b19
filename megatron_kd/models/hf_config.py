"""A Hugging Face `config.json` <-> our typed ModelConfig (Llama, Qwen3, Qwen3-MoE, Mixtral): the
architecture facts only, no weights and no torch, so checkpoint references and pair checks can
read an HF directory without the converter."""

from __future__ import annotations

from pathlib import Path

from megatron_kd.config.loader import checked_model
from megatron_kd.config.schema import ModelConfig, MoEConfig
from megatron_kd.config.validate import moe_layers
from megatron_kd.errors import ConfigError
from megatron_kd.jsonio import read_json

SUPPORTED = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3", "Qwen2ForCausalLM": "qwen2",
             "Qwen3MoeForCausalLM": "qwen3_moe", "MixtralForCausalLM": "mixtral"}
HF_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def read_hf_config(hf_dir: Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"'{hf_dir}' is not a Hugging Face model directory (no config.json)")
    cfg = read_json(path, dict, "Hugging Face config")
    archs = cfg.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else repr(archs)
    if arch not in SUPPORTED:
        raise ConfigError(f"unsupported Hugging Face architecture {arch} in {path}; supported: "
                          f"{', '.join(a for a in SUPPORTED if a != 'Qwen2ForCausalLM')}")
    return cfg


def _rope(cfg: dict) -> tuple[float, bool, float]:
    """(theta, llama3 scaling?, factor); transformers 5 nests these in rope_parameters."""
    params = cfg.get("rope_parameters") or {}
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or (params if params.get("rope_type") not in (None, "default") else None)
    if not scaling or scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        return theta, False, 8.0
    kind = scaling.get("rope_type", scaling.get("type"))
    expected = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    if kind != "llama3" or any(float(scaling.get(k, v)) != v for k, v in expected.items()):
        raise ConfigError(f"unsupported RoPE scaling {scaling}; megatron-core supports llama3 scaling "
                          "with low_freq_factor 1, high_freq_factor 4, original length 8192")
    return theta, True, float(scaling.get("factor", 8.0))


def hf_num_experts(cfg: dict) -> int:
    """Routed experts of a Qwen3-MoE or Mixtral config.json: Qwen3-MoE's files on the hub say
    num_experts, transformers 5 and Mixtral's say num_local_experts."""
    value = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"config.json's number of experts (num_experts / num_local_experts) is {value!r}, not a "
                          "whole number >= 0; restore the file as the model was released")
    return value


def _moe_from_hf(cfg: dict) -> MoEConfig:
    """Qwen3-MoE's sparse blocks as model.moe. Its router is a softmax over all experts, then the
    top k; norm_topk_prob=true renormalises the k chosen probabilities, which equals a softmax
    over the k chosen logits: megatron-core's pre_softmax=false. Without renormalising it is the
    softmax over all experts cut to the top k: pre_softmax=true."""
    experts, layers = hf_num_experts(cfg), cfg["num_hidden_layers"]
    step, dense = cfg.get("decoder_sparse_step", 1) or 1, set(cfg.get("mlp_only_layers") or [])
    pattern = [int(i not in dense and (i + 1) % step == 0) for i in range(layers)]
    if experts == 0 or not any(pattern):
        return MoEConfig()  # no sparse block: a dense Qwen3 with Qwen3-MoE's tensor names
    topk, renormalise = cfg.get("num_experts_per_tok", 8), bool(cfg.get("norm_topk_prob", False))
    if topk == 1 and renormalise:
        raise ConfigError("Qwen3-MoE with num_experts_per_tok=1 and norm_topk_prob=true (every routing weight "
                          "exactly 1) is not supported: megatron-core's top-1 softmax router needs "
                          "pre_softmax (norm_topk_prob=false)")
    return MoEConfig(num_experts=experts, router_topk=topk, ffn_hidden_size=cfg["moe_intermediate_size"],
                     layer_freq=1 if all(pattern) else pattern, pre_softmax=not renormalise,
                     aux_loss_coeff=cfg.get("router_aux_loss_coef") or 0.0)


def _mixtral_moe(cfg: dict) -> MoEConfig:
    """Mixtral's sparse blocks as model.moe: every layer, experts of intermediate_size, and the
    top k of a softmax over all experts renormalised, which is a softmax over the k largest
    logits (pre_softmax=false)."""
    if not cfg.get("num_local_experts"):
        raise ConfigError("Mixtral's config.json gives no num_local_experts (its experts per layer); restore "
                          "the file as the model was released")
    topk, jitter = cfg.get("num_experts_per_tok", 2), cfg.get("router_jitter_noise") or 0.0
    if topk == 1:
        raise ConfigError("Mixtral with num_experts_per_tok=1 (every routing weight exactly 1) is not supported: "
                          "megatron-core's top-1 softmax router needs routing weights that are not renormalised")
    if jitter:
        raise ConfigError(f"unsupported router_jitter_noise={jitter} in config.json (Mixtral's training-time "
                          "noise on the router's input); set it to 0.0")
    return MoEConfig(num_experts=hf_num_experts(cfg), router_topk=topk, ffn_hidden_size=cfg["intermediate_size"],
                     layer_freq=1, pre_softmax=False, aux_loss_coeff=float(cfg.get("router_aux_loss_coef") or 0.0))


def hf_moe_family(m: ModelConfig) -> str:
    """The Hugging Face family an MoE model is read and written as: Qwen3-MoE normalises queries
    and keys, Mixtral does not (as dense models are Qwen3 or Llama)."""
    return "qwen3_moe" if m.qk_layernorm else "mixtral"


def hf_to_model_config(cfg: dict, name: str) -> ModelConfig:
    """The ModelConfig of a config.json, checked as a model recipe is (one line naming the file
    for a missing key or a value of the wrong type or range)."""
    source = f"{name}/config.json"
    try:
        m = _hf_to_model_config(cfg, name)
    except (KeyError, TypeError, ValueError) as exc:
        what = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else f"a value of the wrong type ({exc})"
        raise ConfigError(f"{source} has {what}; restore the file as the model was released") from None
    return checked_model(m, source)


def _hf_to_model_config(cfg: dict, name: str) -> ModelConfig:
    arch = SUPPORTED[cfg["architectures"][0]]
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    if arch == "qwen2" or cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ConfigError(f"unsupported Hugging Face model {cfg['architectures'][0]} with biases; "
                          "megatron_kd's llama-style models have no biases (Llama, Qwen3, Qwen3-MoE, Mixtral)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"unsupported activation {cfg.get('hidden_act')}; SwiGLU (silu) only")
    # Qwen's files carry a sliding_window that use_sliding_window=false leaves unused; Mixtral's applies when set
    window = "use_sliding_window=true" if cfg.get("use_sliding_window") else None
    if arch == "mixtral" and cfg.get("sliding_window"):
        window = f"sliding_window={cfg['sliding_window']}"
    if window:
        raise ConfigError(f"unsupported sliding-window attention ({window} in config.json); "
                          "megatron_kd's models attend over the whole sequence")
    if cfg.get("quantization_config"):
        raise ConfigError(f"unsupported quantized checkpoint ({cfg['quantization_config'].get('quant_method', '?')}"
                          " in config.json); convert the unquantized (bf16) release")
    theta, scaling, factor = _rope(cfg)
    return ModelConfig(
        name=name, num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["intermediate_size"], num_attention_heads=heads,
        num_query_groups=cfg.get("num_key_value_heads", heads),
        kv_channels=head_dim if head_dim * heads != cfg["hidden_size"] else None,
        vocab_size=cfg["vocab_size"], make_vocab_size_divisible_by=128,
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        rotary_base=int(theta), rope_scaling=scaling, rope_scaling_factor=factor,
        untie_embeddings_and_output_weights=not cfg.get("tie_word_embeddings", False),
        qk_layernorm=arch in ("qwen3", "qwen3_moe"), norm_epsilon=cfg.get("rms_norm_eps", 1e-5),
        init_method_std=cfg.get("initializer_range", 0.02),
        moe={"qwen3_moe": _moe_from_hf, "mixtral": _mixtral_moe}.get(arch, lambda _: MoEConfig())(cfg))


def _refuse_unwritable(m: ModelConfig, family: str) -> None:
    """One line naming what `family` (Qwen3-MoE or Mixtral) cannot express of model.moe."""
    moe, title = m.moe, {"qwen3_moe": "Qwen3-MoE", "mixtral": "Mixtral"}[family]
    cannot = [why for bad, why in (
        (moe.score_function != "softmax", f"model.moe.score_function={moe.score_function} ({title} routes by softmax)"),
        (moe.shared_expert_ffn_hidden_size,
         f"a shared expert (model.moe.shared_expert_ffn_hidden_size; {title} has none)"),
        (family == "mixtral" and moe.pre_softmax,
         "model.moe.pre_softmax=true (Mixtral renormalises its top-k routing weights: pre_softmax=false)"),
        (family == "mixtral" and not all(moe_layers(m)),
         "a dense layer (model.moe.layer_freq; every Mixtral layer is an MoE layer)"),
    ) if bad]
    if cannot:
        qwen3_holds = family == "mixtral" and moe.score_function == "softmax" and not moe.shared_expert_ffn_hidden_size
        hint = "; a model with model.qk_layernorm=true is written as Qwen3-MoE" if qwen3_holds else ""
        raise ConfigError(f"model {m.name} cannot be written as Hugging Face {title}: {'; '.join(cannot)}{hint}")


def _moe_to_hf(m: ModelConfig) -> dict:
    """Qwen3-MoE's or Mixtral's config.json fields for model.moe, refusing in one line what that
    family cannot express. (capacity_factor, token_dispatcher and z_loss_coeff are how training
    routes, not what the weights compute: transformers' model is dropless.)"""
    moe, family = m.moe, hf_moe_family(m)
    _refuse_unwritable(m, family)
    if family == "mixtral":
        return {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                "num_local_experts": moe.num_experts, "num_experts_per_tok": moe.router_topk,
                "intermediate_size": moe.ffn_hidden_size or m.ffn_hidden_size,
                "router_aux_loss_coef": moe.aux_loss_coeff, "router_jitter_noise": 0.0,
                "output_router_logits": False, "sliding_window": None}
    return {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "num_experts": moe.num_experts, "num_experts_per_tok": moe.router_topk,
        "moe_intermediate_size": moe.ffn_hidden_size or m.ffn_hidden_size,
        "decoder_sparse_step": 1, "mlp_only_layers": [i for i, s in enumerate(moe_layers(m)) if not s],
        "norm_topk_prob": not moe.pre_softmax, "router_aux_loss_coef": moe.aux_loss_coeff,
        "output_router_logits": False, "use_sliding_window": False, "sliding_window": None,
    }


def model_config_to_hf(m: ModelConfig, dtype: str) -> dict:
    head_dim = m.kv_channels or m.hidden_size // m.num_attention_heads
    arch = "Qwen3ForCausalLM" if m.qk_layernorm else "LlamaForCausalLM"
    rope = {"rope_theta": float(m.rotary_base), "rope_type": "default"}
    if m.rope_scaling:
        rope = {"rope_theta": float(m.rotary_base), "rope_type": "llama3", "factor": m.rope_scaling_factor,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return {
        "architectures": [arch], "model_type": "qwen3" if m.qk_layernorm else "llama",
        "hidden_size": m.hidden_size, "intermediate_size": m.ffn_hidden_size,
        "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_query_groups or m.num_attention_heads, "head_dim": head_dim,
        "vocab_size": m.vocab_size, "max_position_embeddings": m.max_position_embeddings,
        "rms_norm_eps": m.norm_epsilon, "rope_parameters": rope, "hidden_act": "silu",
        "tie_word_embeddings": not m.untie_embeddings_and_output_weights,
        "attention_bias": False, "mlp_bias": False, "initializer_range": m.init_method_std,
        "torch_dtype": {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype],
        **(_moe_to_hf(m) if m.moe.num_experts else {}),
    }
