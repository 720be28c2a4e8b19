"""Single-rank model-building checks (run in a subprocess: the CPU layer patches torch)."""

from __future__ import annotations


def build_and_count(workdir: str) -> dict:
    import torch

    from megatron_kd.config import load_config, padded_vocab_size
    from megatron_kd.models.gpt import build_gpt_model
    from megatron_kd.models.params import count_parameters
    from megatron_kd.runtime import cpu_compat
    from megatron_kd.runtime.distributed import init_distributed, shutdown

    out = {}
    variants = {
        "llama_untied": ["model.num_query_groups=2"],
        "qwen_tied_qknorm": ["model.untie_embeddings_and_output_weights=false", "model.qk_layernorm=true"],
        "bf16": ["precision.dtype=bf16"],
        "moe": ["model.moe.num_experts=4", "model.moe.ffn_hidden_size=128"],
        "moe_shared_second_layer": ["model.moe.num_experts=4", "model.moe.shared_expert_ffn_hidden_size=32",
                                    "model.moe.layer_freq=[0,1]", "model.moe.router_topk=1",
                                    "model.moe.pre_softmax=true"],
    }
    for i, (name, ov) in enumerate(variants.items()):
        cfg = load_config("train/tiny-mock", ov)
        if i == 0:
            init_distributed(cfg.parallel, cfg.run.seed)
        m = cfg.model
        model = build_gpt_model(m, cfg.parallel, cfg.precision)
        padded = padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, cfg.parallel.tp)
        tokens = torch.randint(0, m.vocab_size, (2, 8))
        logits = model(tokens, torch.arange(8).expand(2, -1), None)
        out[name] = {
            "built": sum(p.numel() for p in model.parameters()),
            "analytic": count_parameters(m, padded).total,
            "dtype": str(next(model.parameters()).dtype),
            "logits_shape": list(logits.shape),
            "finite": bool(torch.isfinite(logits).all()),
            "has_output_layer_weight": model.output_layer.weight is not None,
        }
    out["cpu_layer_active"] = cpu_compat.is_active()
    shutdown()
    return out
