"""Megatron-LM checkpoints written and read on gloo ranks (tests/checkpoint/test_megatron_lm.py)."""

from __future__ import annotations

from pathlib import Path

import torch

# A llama-style model with GQA, untied embeddings and a padded vocabulary (250 -> 256).
ARCH = dict(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
            vocab_size=250, padded_vocab_size=256, max_position_embeddings=64, rotary_base=10000,
            untie_embeddings_and_output_weights=True)
# Its MoE sibling: layer 0 dense, layer 1 four experts of which each token takes two.
MOE = dict(num_experts=4, router_topk=2, ffn_hidden_size=32, layer_freq=[0, 1])


def megatron_lm_argv(tp: int, moe: bool, save_dir: str) -> list[str]:
    """pretrain_gpt.py's command line for this model (the local layer spec megatron_kd builds on CPU)."""
    a = ARCH
    argv = ["--num-layers", a["num_layers"], "--hidden-size", a["hidden_size"], "--ffn-hidden-size",
            a["ffn_hidden_size"], "--num-attention-heads", a["num_attention_heads"], "--group-query-attention",
            "--num-query-groups", a["num_query_groups"], "--seq-length", 32, "--max-position-embeddings",
            a["max_position_embeddings"], "--position-embedding-type", "rope", "--normalization", "RMSNorm",
            "--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights",
            "--tensor-model-parallel-size", tp, "--micro-batch-size", 1, "--global-batch-size", 8,
            "--train-iters", 10, "--lr", 1e-4, "--save", save_dir, "--save-interval", 7, "--ckpt-format",
            "torch_dist", "--tokenizer-type", "NullTokenizer", "--vocab-size", a["vocab_size"], "--no-save-optim",
            "--no-save-rng", "--transformer-impl", "local", "--no-gradient-accumulation-fusion",
            "--no-bias-swiglu-fusion", "--no-rope-fusion", "--no-masked-softmax-fusion",
            "--attention-dropout", 0, "--hidden-dropout", 0]
    if moe:
        argv += ["--num-experts", MOE["num_experts"], "--moe-router-topk", MOE["router_topk"],
                 "--moe-ffn-hidden-size", MOE["ffn_hidden_size"], "--moe-layer-freq", "[0,1]",
                 "--moe-token-dispatcher-type", "alltoall", "--sequence-parallel"]
    return ["pretrain_gpt.py", *map(str, argv)]


def _megatron_lm_args(argv: list[str], global_variables: bool):
    """Megatron-LM's args for `argv`, parsed and validated by its own code and made its globals."""
    import sys
    import typing

    typing.override = getattr(typing, "override", lambda f: f)
    from megatron.training import arguments, global_vars

    arguments.get_device_arch_version = lambda: 10
    saved, sys.argv = sys.argv, argv
    try:
        args = arguments.parse_args()
    finally:
        sys.argv = saved
    arguments.validate_args(args, {})
    args.padded_vocab_size = ARCH["padded_vocab_size"]  # what its tokenizer builder pads 250 to at TP=2
    global_vars.unset_global_variables()
    if global_variables:  # the microbatch calculator load_checkpoint updates
        global_vars.set_global_variables(args, build_tokenizer=False)
    else:
        global_vars.set_args(args)
    return args


def _megatron_lm_save(model, tp: int, moe: bool, save_dir: str, iteration: int) -> None:
    """Megatron-LM's own save_checkpoint (megatron/training, shipped with megatron-core 0.19.2),
    its args from its own parse_args/validate_args. Three adaptations to a CPU machine on Python
    3.11: typing.override (3.12) for megatron/training's imports; the GPU generation that
    validate_args asks for at TP>1 (only to advise on CUDA_DEVICE_MAX_CONNECTIONS) given as
    Blackwell's; and get_rng_state, which reads the CUDA generator, returns nothing (its result
    is not saved with --no-save-rng)."""
    _megatron_lm_args(megatron_lm_argv(tp, moe, save_dir), global_variables=False)
    from megatron.training import checkpointing
    checkpointing.get_rng_state = lambda *a, **k: None
    checkpointing.save_checkpoint(iteration, [model], None, None, 0)


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


def save_with_megatron_lm(workdir: str, save_dirs: dict, tp: int, iteration: int) -> dict:
    """Each model at TP=`tp`, saved by Megatron-LM's save_checkpoint; its logits."""
    from megatron_kd.config.schema import ParallelConfig
    from megatron_kd.runtime.distributed import init_distributed, shutdown

    init_distributed(ParallelConfig(tp=tp), 1234)
    logits = {}
    for kind, save_dir in save_dirs.items():
        model = _model(tp, kind == "moe")
        _megatron_lm_save(model, tp, kind == "moe", save_dir, iteration)
        logits[kind] = _logits(model)
    shutdown()
    return logits


def load_as_teacher_and_export(workdir: str, save_dirs: dict, run_dir: str) -> dict:
    """Resolve each Megatron-LM save dir as a KD teacher (converted once into $MKD_CACHE), load it
    at TP=1; write it back as a Megatron-LM save dir and load that with Megatron-LM's own
    load_checkpoint (--no-load-optim --no-load-rng)."""
    from megatron_kd.checkpoint.model_io import load_model_weights
    from megatron_kd.config import load_config
    from megatron_kd.config.schema import ParallelConfig
    from megatron_kd.convert.megatron_lm import mcore_to_megatron_lm
    from megatron_kd.distill.teacher import resolve_teacher
    from megatron_kd.runtime.distributed import init_distributed, shutdown

    init_distributed(ParallelConfig(), 0)
    results = {}
    for kind, save_dir in save_dirs.items():
        cfg = load_config(None, ["model.num_layers=1", "model.hidden_size=32", "model.ffn_hidden_size=64",
                                 "model.num_attention_heads=4", f"model.vocab_size={ARCH['vocab_size']}",
                                 "model.max_position_embeddings=32", "train.seq_length=32", "train.steps=1",
                                 "data.mock=true", f"teacher.checkpoint={save_dir}", "kd.alpha=0.5",
                                 f"run.dir={run_dir}"])
        ckpt, teacher, state = resolve_teacher(cfg, check=True)
        model = _model(1, kind == "moe")
        load_model_weights(model, ckpt)
        loaded = _logits(model)
        exported = Path(workdir) / f"exported-{kind}"
        mcore_to_megatron_lm(ckpt, exported)
        again = _model(1, kind == "moe")  # read back by Megatron-LM's own load_checkpoint
        _megatron_lm_args(megatron_lm_argv(1, kind == "moe", str(exported)) + [
            "--load", str(exported), "--no-load-optim", "--no-load-rng"], global_variables=True)
        from megatron.training.checkpointing import load_checkpoint

        iteration, _ = load_checkpoint([again], None, None)
        fields = ("num_layers", "num_query_groups", "vocab_size", "padded_vocab_size", "kv_channels",
                  "untie_embeddings_and_output_weights")
        results[kind] = {"teacher": {k: getattr(teacher, k) for k in fields},
                         "moe": [teacher.moe.num_experts, teacher.moe.router_topk, teacher.moe.layer_freq],
                         "step": state["step"], "consumed_samples": state["consumed_samples"], "loaded": loaded,
                         "exported": _logits(again), "megatron_lm_iteration": iteration,
                         "tracker": (exported / "latest_checkpointed_iteration.txt").read_text()}
    shutdown()
    return results
