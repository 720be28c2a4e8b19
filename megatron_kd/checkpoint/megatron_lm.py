"""Checkpoints written by Megatron-LM (and Megatron-Bridge), read without running their code.

Megatron-LM's `save_checkpoint` writes a save directory holding `latest_checkpointed_iteration.txt`
(the tracker: an iteration or `release`) and one `iter_NNNNNNN/` (or `release/`) directory per
save. In the `torch_dist` format that directory is a megatron-core dist_checkpointing directory:
`metadata.json`, the `.distcp` shards and `common.pt`, the common state: `args` (the
argparse.Namespace the run was started with), `iteration`, `checkpoint_version`. Its model sits
under "model" with megatron-core GPTModel's sharded keys, the keys megatron_kd's own checkpoints
use. Megatron-Bridge writes the same layout with its config as `run_config.yaml`.

This module finds the iteration directory, reads the architecture (`saved_architecture`: the
args, read by a restricted unpickler, else Bridge's YAML, read by the safe loader) and maps it
onto a ModelConfig, refusing in one line what a llama-style ModelConfig cannot represent. A
Megatron-LM directory given as a teacher or as checkpoint.load is converted once into a
megatron_kd checkpoint in $MKD_CACHE (`ensure_converted`, by `mkd convert megatron-lm-to-mcore`
in a subprocess, like a Hugging Face teacher); `use_te_names` maps Transformer Engine names that
megatron-core's local spec spells differently; `model_config_to_args` writes the args back.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from megatron_kd.checkpoint.hf_cache import DONE, wait_for_rank0
from megatron_kd.config import yaml_safe
from megatron_kd.config.loader import checked_model, coerce_value
from megatron_kd.config.schema import ModelConfig, MoEConfig
from megatron_kd.errors import ConfigError

TRACKER = "latest_checkpointed_iteration.txt"
BRIDGE_CONFIG = "run_config.yaml"


def is_megatron_lm_iter_dir(path: str | Path) -> bool:
    """An iteration directory of Megatron-LM's torch_dist format: a dist checkpoint (metadata.json)
    that is not one of megatron_kd's (no state file)."""
    p = Path(path)
    return (p / "metadata.json").is_file() and not (p / "mkd_state.json").is_file()


def is_megatron_lm_dir(path: str | Path) -> bool:
    """A Megatron-LM save directory (its tracker) or one of its iteration directories."""
    p = Path(path)
    return p.is_dir() and ((p / TRACKER).is_file() or is_megatron_lm_iter_dir(p))


def iteration_dir(path: str | Path) -> Path:
    """The iteration directory `path` means: itself, or the one its tracker names."""
    p = Path(path)
    if is_megatron_lm_iter_dir(p):
        return p
    text = (p / TRACKER).read_text().strip()
    name = "release" if text == "release" else f"iter_{int(text):07d}" if text.isdigit() else None
    if name is None:
        raise ConfigError(f"{p / TRACKER} holds {text[:40]!r}, not an iteration or 'release'; point at "
                          "one of the iter_* directories instead")
    it = p / name
    if not it.is_dir():
        legacy = "" if it.exists() else " (missing)"
        raise ConfigError(f"{p / TRACKER} names {name}, which is not a directory here{legacy}; point at an "
                          "existing iter_* directory")
    if not is_megatron_lm_iter_dir(it):
        raise ConfigError(f"{it} is not a torch_dist checkpoint (no metadata.json: Megatron-LM's legacy "
                          "per-rank 'torch' format); re-save it with --ckpt-format torch_dist")
    return it


# --- the saved args, read without running code ------------------------------------------------

# megatron-core's enums that Megatron-LM's args hold as values (attention backend, CUDA-graph
# scopes, ...): read as "Name(value)" strings by a stand-in, so megatron-core is never imported
# (nor anything called) to read the args.
_ENUMS = ("ModelType", "LayerType", "AttnType", "AttnMaskType", "AttnBackend", "CudaGraphModule",
          "CudaGraphScope", "InferenceCudaGraphScope")


def _enum_stand_in(name: str):
    def value_of(value):
        return f"{name}({value})"
    return value_of


_OTHER_ENUMS = ("signal.Signals",)  # Megatron-LM's --exit-signal


def _allowed_globals() -> list:
    """What an args pickle may name: the Namespace, and enums (as stand-ins)."""
    return [argparse.Namespace,
            *((_enum_stand_in(n), f"megatron.core.transformer.enums.{n}") for n in _ENUMS),
            *((_enum_stand_in(q.rsplit(".", 1)[1]), q) for q in _OTHER_ENUMS)]


def _first_reason(exc: Exception) -> str:
    """torch's refusal names the global on one of its lines ("Unsupported global: ..."): that one."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    named = [ln for ln in lines if "global" in ln.lower() and ("GLOBAL" in ln or "Unsupported" in ln)]
    return (named or lines or [type(exc).__name__])[0].split(" was not an allowed")[0][:160]


COMMON_ITEM = "common_state/shard_0_1"  # megatron-core's ShardedObject("common_state", ...) in the .distcp files


def _common_bytes(iter_dir: Path) -> tuple[Path, bytes]:
    """The pickled common state: a legacy common.pt, else megatron-core's common_state item, found
    through the metadata read the restricted way."""
    from megatron_kd.checkpoint.safe_load import read_metadata  # lazy: it needs torch

    legacy = iter_dir / "common.pt"
    if legacy.is_file():
        return legacy, legacy.read_bytes()
    metadata = read_metadata(iter_dir)
    for index, info in metadata.storage_data.items():
        if getattr(index, "fqn", None) == COMMON_ITEM:
            rel = Path(str(info.relative_path))
            if rel.is_absolute() or ".." in rel.parts or info.transform_descriptors:
                break
            with open(iter_dir / rel, "rb") as f:
                f.seek(int(info.offset))
                return iter_dir / rel, f.read(int(info.length))
    raise ConfigError(f"{iter_dir} holds no common state (the args and iteration Megatron-LM saves); point at "
                      "a complete iter_* directory")


def read_common_state(iter_dir: Path) -> dict:
    """The common state of a Megatron-LM iteration directory: tensors, plain containers, the args
    Namespace and megatron-core enums only; anything else is one line, nothing run."""
    import io

    import torch

    path, data = _common_bytes(Path(iter_dir))
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler's refusal, or a damaged file
        raise ConfigError(f"refused to load {path}: it holds more than the args Namespace and plain values "
                          f"({_first_reason(exc)}); nothing in it was run") from exc
    if isinstance(state, list) and len(state) == 1:  # the common_state item holds [state]
        state = state[0]
    if not isinstance(state, dict):
        raise ConfigError(f"{path} holds a {type(state).__name__}, not Megatron-LM's common state")
    return state


def args_unpickling():
    """The context in which megatron-core's own loader may unpickle an args Namespace (what
    read_common_state accepted first)."""
    import torch

    return torch.serialization.safe_globals(_allowed_globals())


def saved_args(iter_dir: Path) -> dict | None:
    """The architecture fields an iteration directory was saved with, as a plain dict in
    Megatron-LM's argument names: its args Namespace, else Bridge's run_config.yaml (beside it
    or in its save directory); None when neither is there."""
    args = read_common_state(iter_dir).get("args")
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    for candidate in (iter_dir / BRIDGE_CONFIG, iter_dir.parent / BRIDGE_CONFIG):
        if candidate.is_file():
            return _bridge_args(candidate)
    return None


# Megatron-Bridge's model config uses TransformerConfig's names; these differ from the args'.
_BRIDGE_NAMES = {"num_moe_experts": "num_experts", "layernorm_epsilon": "norm_epsilon",
                 "gated_linear_unit": "swiglu", "rope_scaling": "use_rope_scaling"}
# Llama 3.1's RoPE scaling as Bridge's Llama 3.1/3.2 providers hold it, and the one megatron-core applies
_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "old_context_len": 8192}


def _bridge_model(path: Path) -> dict:
    """run_config.yaml's model section as one flat mapping. Bridge writes it in two shapes: a model
    provider (a TransformerConfig subclass: every field at one level, `_target_` naming the
    provider) or a GPT model config (`_builder_`; the TransformerConfig's fields nested under
    `transformer`, the embedding and RoPE fields beside it)."""
    try:
        doc = yaml_safe.load(path.read_text())
    except Exception as exc:  # the safe loader refuses tags and oversized documents
        raise ConfigError(f"cannot read {path}: {str(exc).splitlines()[0][:160]}") from exc
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        raise ConfigError(f"{path} has no 'model' mapping (Megatron-Bridge writes one); give teacher.model")
    nested = model.get("transformer")
    if isinstance(nested, dict):
        return {**nested, **{k: v for k, v in model.items() if k != "transformer"}}
    return model


# Set in the args read from a run_config.yaml that does not say which activation the model has
ACTIVATION_UNKNOWN = "activation_unknown"


def _activation(model: dict) -> str | None:
    """The activation's name: a provider writes the function as {_target_: torch.nn.functional.silu},
    Bridge's GPT model config as `silu`; Megatron-LM's own GPT model config leaves callables out
    (None)."""
    value = model.get("activation_func")
    if isinstance(value, dict):
        value = value.get("_target_")
    return value.rsplit(".", 1)[-1] if isinstance(value, str) else None


def _bridge_args(path: Path) -> dict:
    """run_config.yaml's model section in Megatron-LM's argument names."""
    model = _bridge_model(path)
    args = {_BRIDGE_NAMES.get(k, k): v for k, v in model.items()}
    if "share_embeddings_and_output_weights" in model:
        args["untie_embeddings_and_output_weights"] = not model["share_embeddings_and_output_weights"]
    activation = _activation(model)
    if activation is None:
        args[ACTIVATION_UNKNOWN] = True  # checkpoint_model takes it from the recipe given, else asks for one
    elif args.get("swiglu") and activation != "silu":
        args["swiglu"] = False  # a gated unit with another activation (GeGLU) is not SwiGLU
    args.setdefault("max_position_embeddings", model.get("seq_length"))
    if "padded_vocab_size" not in args and args.get("vocab_size"):
        # Bridge pads the vocabulary only with should_pad_vocab, as Megatron-LM does: to a multiple of
        # make_vocab_size_divisible_by x TP
        unit = _arg(args, "make_vocab_size_divisible_by", int, str(path), 128) * \
            _arg(args, "tensor_model_parallel_size", int, str(path), 1)
        vocab = _arg(args, "vocab_size", int, str(path))
        args["padded_vocab_size"] = -(-vocab // unit) * unit if args.get("should_pad_vocab") else vocab
    if model.get("scale_factor") is not None and "old_context_len" in model:  # Llama 3.1's scaled RoPE
        args["use_rope_scaling"], args["rope_scaling_factor"] = True, model["scale_factor"]
        args["llama3_rope"] = {k: model.get(k) for k in _LLAMA3_ROPE}
    return args


# --- args -> ModelConfig ----------------------------------------------------------------------

# (argument, the value a llama-style ModelConfig needs, what the checkpoint has instead)
_MUST = (("normalization", "RMSNorm", "LayerNorm instead of RMSNorm"),
         ("swiglu", True, "an MLP without SwiGLU"),
         ("position_embedding_type", "rope", "position embeddings other than RoPE"),
         ("add_bias_linear", False, "biases on the linear layers"),
         ("add_qkv_bias", False, "biases on the QKV projection"),
         ("multi_latent_attention", False, "multi-latent attention (MLA)"),
         ("apply_layernorm_1p", False, "zero-centred layer-norm weights (apply_layernorm_1p)"),
         ("layernorm_zero_centered_gamma", False, "zero-centred layer-norm weights"),
         ("rotary_interleaved", False, "interleaved RoPE"),
         ("qk_l2_norm", False, "L2-normalised queries and keys"),
         ("use_legacy_models", False, "a legacy (non megatron-core) model"),
         ("moe_router_enable_expert_bias", False, "a router expert bias"),
         ("moe_shared_expert_gate", False, "a gated shared expert"),
         ("softmax_type", "vanilla", "an attention softmax with sink or learnable offsets (softmax_type)"),
         ("attention_output_gate", False, "a gated attention output"))
# (argument, what it is) refused when set to anything but None / 0 / empty
_UNSET = (("mtp_num_layers", "multi-token-prediction layers"), ("window_size", "sliding-window attention"),
          ("hybrid_override_pattern", "a hybrid (Mamba) layer pattern"),
          ("experimental_attention_variant", "an experimental attention variant"),
          ("moe_router_num_groups", "group-limited routing"),
          ("moe_router_topk_scaling_factor", "a top-k scaling factor"),
          ("heterogeneous_layers_config_path", "heterogeneous layers"),
          ("heterogeneous_block_specs", "heterogeneous layers"),
          ("glu_linear_offset", "an offset inside the gated unit (glu_linear_offset)"),
          ("activation_func_clamp_value", "a clamped activation"),
          ("no_rope_freq", "layers without RoPE (no_rope_freq)"),
          ("moe_latent_size", "latent-space experts (moe_latent_size)"))
_DEFAULTS = {"normalization": "LayerNorm", "swiglu": False, "position_embedding_type": "learned_absolute",
             "add_bias_linear": True, "add_qkv_bias": False}  # Megatron-LM's defaults where args lack one


def unsupported_features(args: dict) -> list[str]:
    """What the checkpoint's architecture has that megatron_kd's ModelConfig cannot represent."""
    found = [what for key, want, what in _MUST if args.get(key, _DEFAULTS.get(key, want)) != want]
    found += [what for key, what in _UNSET if args.get(key) not in (None, 0, "", [], False)]
    if args.get("rotary_percent", 1.0) != 1.0:
        found.append(f"partial RoPE (rotary_percent={args['rotary_percent']})")
    llama3 = args.get("llama3_rope") or {}
    if any(not isinstance(llama3.get(k, v), (int, float)) or llama3.get(k, v) != v for k, v in _LLAMA3_ROPE.items()):
        found.append(f"RoPE scaling other than Llama 3.1's ({llama3})")
    return found


def _need(args: dict, key: str, source: str):
    if args.get(key) is None:
        raise ConfigError(f"{source} has no '{key}' in its saved args; give the architecture with teacher.model "
                          "(or --model)")
    return args[key]


def _arg(args: dict, key: str, tp: type, source: str, default=None):
    """args[key] as `tp` (an int written 4.0 is 4; 4.5, "four" or a list are one line naming the
    key and the file); `default` where it is unset, 0 or empty, as Megatron-LM reads its args."""
    value = args.get(key)
    if value is None or (isinstance(value, (int, float, str, list)) and not isinstance(value, bool) and not value):
        return default
    return coerce_value(value, tp, key, f"{source}'s saved args")


def _moe_config(args: dict, source: str) -> MoEConfig:
    if not args.get("num_experts"):
        return MoEConfig()
    freq = args.get("moe_layer_freq", 1)
    dispatcher = args.get("moe_token_dispatcher_type") or "alltoall"
    return MoEConfig(
        num_experts=_arg(args, "num_experts", int, source), router_topk=_arg(args, "moe_router_topk", int, source, 2),
        ffn_hidden_size=_arg(args, "moe_ffn_hidden_size", int, source),
        shared_expert_ffn_hidden_size=_arg(args, "moe_shared_expert_intermediate_size", int, source),
        layer_freq=list(freq) if isinstance(freq, (list, tuple)) else freq,
        score_function=args.get("moe_router_score_function") or "softmax",
        pre_softmax=args.get("moe_router_pre_softmax", False),
        aux_loss_coeff=_arg(args, "moe_aux_loss_coeff", float, source, 0.0),
        z_loss_coeff=_arg(args, "moe_z_loss_coeff", float, source),
        capacity_factor=_arg(args, "moe_expert_capacity_factor", float, source),
        # how tokens travel (flex is DeepEP's) does not change what the layer computes
        token_dispatcher=dispatcher if dispatcher in ("alltoall", "allgather") else "alltoall")


def args_to_model_config(args: dict, source: str, name: str = "megatron-lm") -> ModelConfig:
    """A ModelConfig equal to the architecture of `args` (Megatron-LM's names); one line naming
    each feature it cannot represent."""
    unsupported = unsupported_features(args)
    if unsupported:
        raise ConfigError(f"{source} is a model megatron_kd cannot build: {'; '.join(unsupported)} "
                          "(megatron_kd builds llama-style decoders: RMSNorm, SwiGLU, RoPE, no biases)")
    def number(key: str, tp: type = int, default=None, needed: bool = False):
        if needed:
            _need(args, key, source)
        return _arg(args, key, tp, source, default)

    hidden, heads, padded = number("hidden_size", needed=True), number("num_attention_heads", needed=True), \
        number("padded_vocab_size", needed=True)
    kv = number("kv_channels")
    groups = number("num_query_groups") if args.get("group_query_attention", "num_query_groups" in args) else None
    return checked_model(ModelConfig(
        name=name, num_layers=number("num_layers", needed=True), hidden_size=hidden,
        ffn_hidden_size=number("ffn_hidden_size", needed=True), num_attention_heads=heads,
        num_query_groups=groups if groups and groups != heads else None,
        kv_channels=kv if kv and heads and kv != hidden // heads else None,
        # Megatron-LM keeps only the padded vocabulary unless --vocab-size was given
        vocab_size=number("vocab_size", default=padded),
        make_vocab_size_divisible_by=number("make_vocab_size_divisible_by", default=128),
        padded_vocab_size=padded,
        max_position_embeddings=number("max_position_embeddings") or number("seq_length", needed=True),
        rotary_base=_rotary_base(number("rotary_base", float, 10000.0), source),
        rope_scaling=args.get("use_rope_scaling", False),
        rope_scaling_factor=number("rope_scaling_factor", float, 8.0),
        untie_embeddings_and_output_weights=args.get("untie_embeddings_and_output_weights", False),
        qk_layernorm=args.get("qk_layernorm", False),
        norm_epsilon=number("norm_epsilon", float, 1e-5),
        init_method_std=number("init_method_std", float, 0.02),
        attention_dropout=number("attention_dropout", float, 0.0),
        hidden_dropout=number("hidden_dropout", float, 0.0),
        moe=_moe_config(args, source)), f"{source}'s saved architecture")


def _rotary_base(value: float, source: str) -> int:
    """RoPE's base, a whole number however it was written (Bridge writes 500000.0)."""
    if not (math.isfinite(value) and value.is_integer()):
        raise ConfigError(f"rotary_base = {value!r} in {source}'s saved args is not a whole number; give the "
                          "architecture with teacher.model (or --model)")
    return int(value)


def checkpoint_model(iter_dir: Path, model: ModelConfig | None = None) -> ModelConfig:
    """The ModelConfig of a Megatron-LM iteration directory: read from it, or `model` (a recipe's)
    where it cannot be; when both are there they must agree (the recipe's true vocabulary wins:
    Megatron-LM's args hold only the padded one)."""
    args = saved_args(iter_dir)
    if args is None:
        if model is None:
            raise ConfigError(f"{iter_dir} holds neither saved args nor {BRIDGE_CONFIG}; give its architecture "
                              "with teacher.model (or --model RECIPE)")
        return model
    if model is None and args.get(ACTIVATION_UNKNOWN):
        raise ConfigError(f"{iter_dir}'s {BRIDGE_CONFIG} does not record the model's activation function "
                          "(model.activation_func); give the architecture with teacher.model (or --model RECIPE)")
    saved = args_to_model_config(args, str(iter_dir))  # with a recipe, a gated unit is taken as its SwiGLU
    if model is None:
        return saved
    fields = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
              "kv_channels", "untie_embeddings_and_output_weights", "qk_layernorm", "moe")
    diff = [f"{f}: recipe {getattr(model, f)} vs checkpoint {getattr(saved, f)}" for f in fields
            if getattr(model, f) != getattr(saved, f)]
    if model.vocab_size > saved.padded_vocab_size:
        diff.append(f"vocab_size: recipe {model.vocab_size} vs checkpoint's padded {saved.padded_vocab_size}")
    if diff:
        raise ConfigError(f"{iter_dir} is another architecture than the recipe given ({'; '.join(diff)}); "
                          "give the teacher's recipe or none")
    return dataclasses.replace(model, padded_vocab_size=saved.padded_vocab_size)


# --- Transformer Engine names -> the local spec's -----------------------------------------------

# A local-spec key suffix and the name a checkpoint may hold it under instead: Transformer
# Engine's MoE layers keep a separate pre-MLP norm (the local spec saves it under the fused
# name), and a layer spec without megatron-core's key map saves the input norm unfused.
_ALTERNATIVE_NAMES = (("mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight"),
                      ("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight"))


def _holds(chunks, global_offset: tuple) -> bool:
    """A chunk list (the checkpoint's, for one key) holds the shard starting at `global_offset`
    along its leading (layer) axis."""
    return any(c.offsets[0] <= global_offset[0] < c.offsets[0] + c.sizes[0] for c in chunks)


def use_te_names(sharded_tensors, saved: dict) -> int:
    """Give the shards of `sharded_tensors` (megatron-core ShardedTensors of the local spec) that
    the checkpoint holds under a Transformer Engine name that name, so they load from it; the
    number renamed. `saved`: key -> list of chunks (offsets, sizes), from the checkpoint's
    metadata. Decided per layer, so a model whose layers differ (dense and MoE) maps each right."""
    renamed = 0
    for sh in sharded_tensors:
        if _holds(saved.get(sh.key, ()), sh.global_offset):
            continue
        for ours, theirs in _ALTERNATIVE_NAMES:
            other = sh.key[: -len(ours)] + theirs if sh.key.endswith(ours) else None
            if other and _holds(saved.get(other, ()), sh.global_offset):
                sh.key, renamed = other, renamed + 1
                break
    return renamed


def model_config_to_args(model: ModelConfig, dtype: str, iteration: int, consumed_samples: int) -> argparse.Namespace:
    """The args Namespace Megatron-LM saves with a checkpoint, for `model` at TP=PP=1: the
    architecture fields its `load_args_from_checkpoint` and `check_checkpoint_args` read, the
    format (torch_dist) and the data position."""
    heads = model.num_attention_heads
    moe = model.moe
    experts = {"num_experts": moe.num_experts or None, "moe_router_topk": moe.router_topk,
               "moe_ffn_hidden_size": moe.ffn_hidden_size or model.ffn_hidden_size,
               "moe_shared_expert_intermediate_size": moe.shared_expert_ffn_hidden_size,
               "moe_layer_freq": moe.layer_freq, "moe_router_score_function": moe.score_function,
               "moe_router_pre_softmax": moe.pre_softmax, "moe_aux_loss_coeff": moe.aux_loss_coeff,
               "moe_z_loss_coeff": moe.z_loss_coeff, "moe_expert_capacity_factor": moe.capacity_factor,
               "moe_token_dispatcher_type": moe.token_dispatcher, "moe_router_enable_expert_bias": False,
               "moe_router_topk_scaling_factor": None, "moe_grouped_gemm": False} if moe.num_experts else {
                   "num_experts": None}
    return argparse.Namespace(
        num_layers=model.num_layers, hidden_size=model.hidden_size, ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=heads, group_query_attention=model.num_query_groups is not None,
        num_query_groups=model.num_query_groups or heads, kv_channels=model.kv_channels or model.hidden_size // heads,
        max_position_embeddings=model.max_position_embeddings, seq_length=model.max_position_embeddings,
        position_embedding_type="rope", use_rotary_position_embeddings=True,
        add_position_embedding=True,  # Megatron-LM's default; position_embedding_type decides (checked on load)
        rotary_base=model.rotary_base, rotary_percent=1.0, rotary_interleaved=False,
        use_rope_scaling=model.rope_scaling, rope_scaling_factor=model.rope_scaling_factor,
        add_bias_linear=False, add_qkv_bias=False, swiglu=True, squared_relu=False,
        untie_embeddings_and_output_weights=model.untie_embeddings_and_output_weights,
        apply_layernorm_1p=False, normalization="RMSNorm", norm_epsilon=model.norm_epsilon,
        qk_layernorm=model.qk_layernorm, attention_dropout=model.attention_dropout,
        hidden_dropout=model.hidden_dropout, init_method_std=model.init_method_std,
        vocab_size=model.vocab_size, padded_vocab_size=model.padded_vocab_size,
        make_vocab_size_divisible_by=model.make_vocab_size_divisible_by,
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1, ckpt_format="torch_dist",
        use_dist_ckpt=True, bf16=dtype == "bf16", fp16=dtype == "fp16", iteration=iteration,
        consumed_train_samples=consumed_samples, consumed_valid_samples=0, multi_latent_attention=False,
        **experts)


# --- converted once, cached -------------------------------------------------------------------

def cache_dir_for(iter_dir: Path, model_recipe: str | None) -> Path:
    """$MKD_CACHE/megatron-lm/<name>-<hash of path, recipe and the files' sizes and times>."""
    root = Path(os.environ.get("MKD_CACHE", Path.home() / ".cache" / "megatron_kd")) / "megatron-lm"
    h = hashlib.sha256(f"{iter_dir.resolve()}|{model_recipe or ''}".encode())
    for f in sorted(p for p in iter_dir.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return root / f"{iter_dir.parent.name}-{iter_dir.name}-{h.hexdigest()[:12]}"


def ensure_converted(ref: str | Path, model_recipe: str | None = None, timeout_s: float = 3600) -> Path:
    """The cached megatron_kd checkpoint of Megatron-LM directory `ref`, converted first if
    needed: rank 0 (or a single process) converts in a clean subprocess, the other ranks wait."""
    iter_dir = iteration_dir(ref)
    out = cache_dir_for(iter_dir, model_recipe)
    if (out / DONE).is_file():
        return out
    failed = out.with_name(out.name + ".failed")
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0:
        import shutil

        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        failed.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        cmd = [sys.executable, "-m", "megatron_kd", "convert", "megatron-lm-to-mcore", str(iter_dir), str(tmp)]
        r = subprocess.run(cmd + (["--model", model_recipe] if model_recipe else []),
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["conversion failed"])[-1].removeprefix("mkd: error: ")
            failed.write_text(f"converting the Megatron-LM checkpoint {iter_dir} failed: {last}")
            raise ConfigError(failed.read_text())
        (tmp / DONE).write_text(json.dumps({"source": str(iter_dir.resolve())}))
        tmp.rename(out)
        return out
    return wait_for_rank0(out, failed, timeout_s,
                          f"waited {timeout_s:.0f} s for rank 0 to convert {iter_dir}; convert it beforehand "
                          f"(`mkd convert megatron-lm-to-mcore {iter_dir} DIR`) and give DIR")
