"""Converted checkpoints against transformers' own models (run on gloo ranks)."""

from __future__ import annotations


def logits_match(workdir: str, hf_dir: str, mcore_dir: str, tp: int) -> dict:
    import torch
    from megatron.core import parallel_state
    from transformers import AutoModelForCausalLM

    from megatron_kd.checkpoint.model_io import load_model_weights
    from megatron_kd.checkpoint.refs import read_state
    from megatron_kd.config import load_config
    from megatron_kd.models.gpt import build_gpt_model
    from megatron_kd.runtime.distributed import init_distributed, shutdown
    from tests.workers.parallel_parity import _gather_vocab

    padded = read_state(mcore_dir)["padded_vocab_size"]
    cfg = load_config(f"{mcore_dir}/config.yaml", [f"parallel.tp={tp}", f"model.padded_vocab_size={padded}"],
                      purpose="model")
    init_distributed(cfg.parallel, 0)
    model = build_gpt_model(cfg.model, cfg.parallel, cfg.precision)
    load_model_weights(model, mcore_dir)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 24), generator=g)
    with torch.no_grad():
        ours = model(tokens, torch.arange(24).expand(2, -1), None)
        if tp > 1:
            ours = _gather_vocab(ours)
        ref = hf(input_ids=tokens).logits
    V = cfg.model.vocab_size
    out = {"max_diff": (ours[..., :V] - ref).abs().max().item(), "padded": ours.shape[-1],
           "ref_scale": ref.abs().max().item(), "tp": parallel_state.get_tensor_model_parallel_world_size()}
    shutdown()
    return out
