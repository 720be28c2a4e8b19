"""Typed model config -> megatron-core TransformerConfig -> GPTModel (llama-style).

The one place where our config meets megatron-core's; student and teacher both come through it.
Transformer Engine's layer spec is used when TE and CUDA are present, the local spec otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_kd.config.schema import ModelConfig, ParallelConfig, PrecisionConfig
from megatron_kd.config.validate import padded_vocab
from megatron_kd.errors import SetupError
from megatron_kd.models.init import init_by_name

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def have_transformer_engine() -> bool:
    """True when Transformer Engine is importable and a GPU is there to run it."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # TE raises various errors without cuDNN/CUDA, not only ImportError
        return False
    return True


def check_fp8_available(precision: PrecisionConfig, key: str = "precision.fp8") -> None:
    if precision.fp8 is not None and not have_transformer_engine():
        raise SetupError(
            f"{key}={precision.fp8} needs Transformer Engine on a CUDA GPU, and it is not "
            f"importable here; run in an NGC PyTorch container on H100s, or set {key}=null"
        )


def check_cuda_features(cfg) -> None:
    """What runs only on CUDA (the layout of a RunConfig): one clear line on a CPU machine."""
    check_fp8_available(cfg.precision)
    if cfg.teacher.fp8 is not None:
        check_fp8_available(teacher_precision(cfg), "teacher.fp8")
    if cfg.parallel.overlap_param_gather and not torch.cuda.is_available():
        raise SetupError("parallel.overlap_param_gather needs CUDA (megatron-core overlaps the gather "
                         "on CUDA streams); set it to false on this machine")


def teacher_precision(cfg) -> PrecisionConfig:
    """The frozen teacher's precision: teacher.dtype / teacher.fp8 over the run's."""
    import dataclasses

    return dataclasses.replace(cfg.precision, dtype=cfg.teacher.dtype or cfg.precision.dtype,
                               fp8=cfg.teacher.fp8 if cfg.teacher.fp8 is not None else cfg.precision.fp8)


def build_transformer_config(model: ModelConfig, parallel: ParallelConfig,
                             precision: PrecisionConfig, perform_initialization: bool = True,
                             recompute: tuple[str, int] = ("none", 1)):
    """megatron-core TransformerConfig for a llama-style decoder under a parallel layout."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    check_fp8_available(precision)
    on_gpu = torch.cuda.is_available()
    dtype = _DTYPES[precision.dtype]
    recompute_kwargs = {}
    if recompute[0] == "selective":  # attention's core (scores, softmax): cheap to redo, big to keep
        recompute_kwargs.update(recompute_granularity="selective")
    elif recompute[0] == "full":  # whole layers, `recompute[1]` per unit
        recompute_kwargs.update(recompute_granularity="full", recompute_method="uniform",
                                recompute_num_layers=recompute[1])
    fp8_kwargs = {}
    if precision.fp8 is not None:
        fp8_kwargs.update(
            fp8=precision.fp8,
            fp8_recipe=precision.fp8_recipe,
            fp8_margin=precision.fp8_margin,
            fp8_amax_history_len=precision.fp8_amax_history_len,
            fp8_amax_compute_algo=precision.fp8_amax_compute_algo,
            fp8_param=precision.fp8_param,
        )
    return TransformerConfig(
        **moe_kwargs(model, parallel, on_gpu),
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.kv_channels,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp if parallel.vpp > 1 else None,
        sequence_parallel=parallel.sequence_parallel,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        qk_layernorm=model.qk_layernorm,
        init_method_std=model.init_method_std,
        attention_dropout=model.attention_dropout,
        hidden_dropout=model.hidden_dropout,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=precision.dtype == "bf16",
        fp16=precision.dtype == "fp16",
        # megatron-core's own initialisation is skipped when models/init.py draws the weights
        # (students: layout-free); otherwise on CPU every rank builds the full master weight
        # from the seed and keeps its shard.
        perform_initialization=perform_initialization,
        use_cpu_initialization=not on_gpu,
        # Fused kernels exist only on GPU (apex/TE/triton); the unfused paths are exact.
        bias_activation_fusion=on_gpu,
        masked_softmax_fusion=False,
        bias_dropout_fusion=on_gpu,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        # Pipeline p2p on CPU must not wait on CUDA streams.
        batch_p2p_sync=on_gpu,
        # Interleaved 1F1B: Megatron-LM's default, p2p overlapped with compute as separate sends
        # and receives. (Batched, the two directions' messages between the same pair of ranks at
        # PP=2 are matched in posting order, which swaps activations and gradients.)
        overlap_p2p_comm=parallel.vpp > 1,
        batch_p2p_comm=parallel.vpp == 1,
        # Megatron-LM's default on GPU: a stage's output, once sent, keeps only its autograd
        # graph (backward gets the gradient from the next stage). Not on CPU, where gloo may still
        # be sending from the storage that would be released.
        deallocate_pipeline_outputs=on_gpu,
        **recompute_kwargs,
        **fp8_kwargs,
    )


def moe_kwargs(model: ModelConfig, parallel: ParallelConfig, on_gpu: bool) -> dict:
    """megatron-core's MoE fields for model.moe and parallel.ep/etp (none for a dense model)."""
    moe = model.moe
    if moe.num_experts == 0:
        return {}
    return dict(
        num_moe_experts=moe.num_experts,
        moe_router_topk=moe.router_topk,
        moe_ffn_hidden_size=moe.ffn_hidden_size or model.ffn_hidden_size,
        moe_shared_expert_intermediate_size=moe.shared_expert_ffn_hidden_size,
        moe_layer_freq=moe.layer_freq,
        moe_router_score_function=moe.score_function,
        moe_router_pre_softmax=moe.pre_softmax,
        moe_router_load_balancing_type="aux_loss" if moe.aux_loss_coeff > 0 else "none",
        moe_aux_loss_coeff=moe.aux_loss_coeff,
        moe_z_loss_coeff=moe.z_loss_coeff,
        moe_expert_capacity_factor=moe.capacity_factor,
        moe_pad_expert_input_to_capacity=False,
        moe_token_dispatcher_type=moe.token_dispatcher,
        moe_grouped_gemm=on_gpu and have_transformer_engine(),  # TE's grouped GEMM; SequentialMLP on CPU
        moe_router_dtype="fp32",  # routing decisions in fp32 whatever the model's dtype
        expert_model_parallel_size=parallel.ep,
        expert_tensor_parallel_size=parallel.etp or parallel.tp,
    )


def layer_spec(model: ModelConfig, use_te: bool | None = None, config=None, vp_stage: int | None = None):
    """ModuleSpec for the decoder: TE fused layers on GPU when available, else local. An MoE model
    gets megatron-core's block spec (its layers dense or MoE by model.moe.layer_freq) for this
    pipeline stage, which needs its TransformerConfig."""
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if use_te is None:
        use_te = have_transformer_engine()
    if model.moe.num_experts:
        from megatron.core import parallel_state

        return specs.get_gpt_decoder_block_spec(config, use_transformer_engine=use_te, normalization="RMSNorm",
                                                vp_stage=vp_stage,
                                                pp_rank=parallel_state.get_pipeline_model_parallel_rank())
    if use_te:
        return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=model.qk_layernorm)
    return specs.get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=model.qk_layernorm)


def build_gpt_model(model: ModelConfig, parallel: ParallelConfig, precision: PrecisionConfig,
                    *, pre_process: bool | None = None, post_process: bool | None = None,
                    vp_stage: int | None = None, init_seed: int | None = None,
                    recompute: tuple[str, int] = ("none", 1), config=None):
    """A megatron-core GPTModel for this pipeline stage, in the configured dtype.

    `init_seed`: draw the initial weights from this seed, the same at any TP/PP (models/init.py);
    None: megatron-core's own initialisation (for models whose weights are loaded next).
    `vp_stage`/`config`: one virtual stage of build_gpt_chunks (`config` carries `recompute`).
    Needs megatron-core's parallel_state to be initialised (see runtime.distributed).
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    if config is None:
        config = build_transformer_config(model, parallel, precision, perform_initialization=init_seed is None,
                                          recompute=recompute)
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model, config=config, vp_stage=vp_stage),
        vocab_size=padded_vocab(model, parallel.tp),
        max_sequence_length=model.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=not model.untie_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_base=model.rotary_base,
        rope_scaling=model.rope_scaling,
        rope_scaling_factor=model.rope_scaling_factor,
        vp_stage=vp_stage,
    )
    if model.moe.num_experts:
        # megatron-core marks experts' weights (allreduce=False: reduced over the expert data-parallel
        # group, stepped by an expert optimizer of their own) only under expert parallelism, so
        # the optimizer's state, and its checkpoint, would change shape between EP=1 and EP>1. At
        # EP=1 the expert data-parallel group is the data-parallel group: the same reduction.
        for name, param in gpt.named_parameters():
            if ".mlp.experts." in name:
                param.allreduce = False
    if init_seed is not None:  # drawn in fp32 on the CPU, cast into each parameter
        init_by_name(gpt, model, init_seed, parallel.tp, parallel_state.get_tensor_model_parallel_rank())
    if precision.dtype != "fp32":
        gpt = gpt.to(_DTYPES[precision.dtype])
    if torch.cuda.is_available():
        gpt = gpt.cuda(torch.cuda.current_device())
    return gpt


def build_gpt_chunks(model: ModelConfig, parallel: ParallelConfig, precision: PrecisionConfig, *,
                     init_seed: int | None = None, recompute: tuple[str, int] = ("none", 1)) -> list:
    """This rank's model chunks: one GPTModel, or with `parallel.vpp` > 1 one per virtual
    pipeline stage (interleaved 1F1B). Rank r of PP holds virtual stages r, r + PP, r + 2PP, ...
    of the PP x VPP equal slices of the layers; the chunks share one TransformerConfig, as
    megatron-core's schedules expect (they read it from the first chunk)."""
    config = build_transformer_config(model, parallel, precision, perform_initialization=init_seed is None,
                                      recompute=recompute)
    return [build_gpt_model(model, parallel, precision, vp_stage=i if parallel.vpp > 1 else None,
                            init_seed=init_seed, config=config) for i in range(parallel.vpp)]
