"""Megatron-LM checkpoints written and read on gloo ranks (tests/checkpoint/test_megatron_lm.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

# A llama-style model with GQA, untied embeddings and a padded vocabulary (250 -> 256).
ARCH = dict(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
            vocab_size=250, padded_vocab_size=256, max_position_embeddings=64, rotary_base=10000,
            untie_embeddings_and_output_weights=True)
# Its MoE sibling: layer 0 dense, layer 1 four experts of which each token takes two.
MOE = dict(num_experts=4, router_topk=2, ffn_hidden_size=32, layer_freq=[0, 1])


def megatron_lm_args(tp: int, moe: bool) -> argparse.Namespace:
    """The args Namespace as Megatron-LM's parse_args/validate_args leave it for this model
    (the architecture fields, derived ones included, and values of other types its args hold:
    a torch dtype, a megatron-core enum, lists)."""
    from megatron.core.transformer.enums import AttnBackend

    a = ARCH
    return argparse.Namespace(
        num_layers=a["num_layers"], hidden_size=a["hidden_size"], ffn_hidden_size=a["ffn_hidden_size"],
        num_attention_heads=a["num_attention_heads"], group_query_attention=True,
        num_query_groups=a["num_query_groups"], kv_channels=a["hidden_size"] // a["num_attention_heads"],
        max_position_embeddings=a["max_position_embeddings"], seq_length=32, position_embedding_type="rope",
        rotary_base=a["rotary_base"], rotary_percent=1.0, rotary_interleaved=False, use_rope_scaling=False,
        normalization="RMSNorm", norm_epsilon=1e-5, swiglu=True, add_bias_linear=False, add_qkv_bias=False,
        untie_embeddings_and_output_weights=True, qk_layernorm=False, apply_layernorm_1p=False,
        multi_latent_attention=False, padded_vocab_size=a["padded_vocab_size"],
        vocab_size=None, make_vocab_size_divisible_by=128, tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=1, ckpt_format="torch_dist", params_dtype=torch.float32, bf16=False,
        fp16=False, attention_backend=AttnBackend.auto, cuda_graph_modules=[], init_method_std=0.02,
        attention_dropout=0.0, hidden_dropout=0.0, consumed_train_samples=56, tokenizer_type="NullTokenizer",
        **(dict(num_experts=MOE["num_experts"], moe_router_topk=MOE["router_topk"],
                moe_ffn_hidden_size=MOE["ffn_hidden_size"], moe_layer_freq=MOE["layer_freq"],
                moe_router_score_function="softmax", moe_router_pre_softmax=False, moe_grouped_gemm=False,
                moe_token_dispatcher_type="alltoall", moe_aux_loss_coeff=0.0, sequence_parallel=tp > 1)
           if moe else {"num_experts": None}))


def _model(tp: int, moe: bool):
    """megatron-core asks MoE layers split over TP ranks for sequence parallelism."""
    from megatron_kd.config.schema import ModelConfig, MoEConfig, ParallelConfig, PrecisionConfig
    from megatron_kd.models.gpt import build_gpt_model

    model = ModelConfig(name="mlm", **ARCH, moe=MoEConfig(**MOE) if moe else MoEConfig())
    return build_gpt_model(model, ParallelConfig(tp=tp, sequence_parallel=moe and tp > 1), PrecisionConfig(),
                           pre_process=True, post_process=True)


def _logits(model) -> list:
    from megatron.core import parallel_state

    from tests.workers.parallel_parity import _gather_vocab

    tokens = torch.randint(0, ARCH["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(tokens, torch.arange(16).expand(2, -1), None)
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        out = _gather_vocab(out)
    return out.tolist()


def save_like_megatron_lm(workdir: str, save_dirs: dict, tp: int, iteration: int) -> dict:
    """Save a GPTModel at TP=`tp` as megatron/training/checkpointing.py's save_checkpoint does for
    ckpt_format=torch_dist: generate_state_dict's {"args", "checkpoint_version": 3.0,
    "iteration", "model": the model's sharded_state_dict(metadata={"dp_cp_group": ...})} written by
    megatron-core's dist_checkpointing.save into iter_NNNNNNN, then the tracker by rank 0."""
    from megatron.core import dist_checkpointing, parallel_state

    from megatron_kd.config.schema import ParallelConfig
    from megatron_kd.runtime.distributed import init_distributed, shutdown

    init_distributed(ParallelConfig(tp=tp), 1234)
    logits = {}
    for kind, save_dir in save_dirs.items():
        model = _model(tp, kind == "moe")
        iter_dir = Path(save_dir) / f"iter_{iteration:07d}"
        if torch.distributed.get_rank() == 0:
            iter_dir.mkdir(parents=True)
        torch.distributed.barrier()
        metadata = {"dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True)}
        state = {"args": megatron_lm_args(tp, kind == "moe"), "checkpoint_version": 3.0, "iteration": iteration,
                 "model": model.sharded_state_dict(metadata=metadata)}
        dist_checkpointing.save(state, str(iter_dir))
        if torch.distributed.get_rank() == 0:
            (Path(save_dir) / "latest_checkpointed_iteration.txt").write_text(str(iteration))
        logits[kind] = _logits(model)
    shutdown()
    return logits


def load_as_teacher_and_export(workdir: str, save_dirs: dict, run_dir: str) -> dict:
    """Resolve the Megatron-LM save dir as a KD teacher (converted once into $MKD_CACHE), load it
    at TP=1; write it back as a Megatron-LM save dir and load that one too."""
    from megatron_kd.checkpoint.megatron_lm import iteration_dir
    from megatron_kd.checkpoint.model_io import load_model_weights
    from megatron_kd.config import load_config
    from megatron_kd.config.schema import ParallelConfig
    from megatron_kd.convert.megatron_lm import load_megatron_lm_weights, mcore_to_megatron_lm
    from megatron_kd.distill.teacher import resolve_teacher
    from megatron_kd.runtime.distributed import init_distributed, shutdown

    init_distributed(ParallelConfig(), 0)
    results = {}
    for kind, save_dir in save_dirs.items():
        cfg = load_config(None, ["model.num_layers=1", "model.hidden_size=32", "model.ffn_hidden_size=64",
                                 "model.num_attention_heads=4", f"model.vocab_size={ARCH['padded_vocab_size']}",
                                 "model.max_position_embeddings=32", "train.seq_length=32", "train.steps=1",
                                 "data.mock=true", f"teacher.checkpoint={save_dir}", "kd.alpha=0.5",
                                 f"run.dir={run_dir}"])
        ckpt, teacher, state = resolve_teacher(cfg, check=True)
        model = _model(1, kind == "moe")
        load_model_weights(model, ckpt)
        loaded = _logits(model)
        exported = Path(workdir) / f"exported-{kind}"
        mcore_to_megatron_lm(ckpt, exported)
        again = _model(1, kind == "moe")
        load_megatron_lm_weights(again, iteration_dir(exported))
        fields = ("num_layers", "num_query_groups", "padded_vocab_size", "kv_channels",
                  "untie_embeddings_and_output_weights")
        results[kind] = {"teacher": {k: getattr(teacher, k) for k in fields},
                         "moe": [teacher.moe.num_experts, teacher.moe.router_topk, teacher.moe.layer_freq],
                         "step": state["step"], "consumed_samples": state["consumed_samples"], "loaded": loaded,
                         "exported": _logits(again),
                         "tracker": (exported / "latest_checkpointed_iteration.txt").read_text()}
    shutdown()
    return results
