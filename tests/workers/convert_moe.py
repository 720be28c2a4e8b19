"""Qwen3-MoE checkpoints converted to megatron-core, against transformers' own model (run on gloo
ranks: one for conversion, export and TP=1 logits; two for expert-parallel logits)."""

from __future__ import annotations


def _logits_diff(hf_dir: str, mcore_dir: str, cfg) -> float:
    """Max |logit difference| of the converted model (this rank's layout) and transformers'."""
    import torch
    from transformers import AutoModelForCausalLM

    from megatron_kd.checkpoint.model_io import load_model_weights
    from megatron_kd.models.gpt import build_gpt_model

    model = build_gpt_model(cfg.model, cfg.parallel, cfg.precision).eval()
    load_model_weights(model, mcore_dir)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True, dtype=torch.float32).eval()
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(tokens, torch.arange(24).expand(2, -1), None)
        ref = hf(input_ids=tokens).logits
    return (ours[..., : cfg.model.vocab_size] - ref).abs().max().item()


def _config(mcore_dir: str, overrides: list[str]):
    from megatron_kd.checkpoint.refs import read_state
    from megatron_kd.config import load_config

    padded = read_state(mcore_dir)["padded_vocab_size"]
    return load_config(f"{mcore_dir}/config.yaml", [f"model.padded_vocab_size={padded}", *overrides],
                       purpose="model")


def _tensors(directory):
    from pathlib import Path

    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def convert_compare_export(workdir: str, models: list[list[str | None]]) -> list[dict]:
    """For each [HF dir, its converted checkpoint or None (convert it here)]: the TP=1 logits'
    max difference to transformers, and the HF -> megatron-core -> HF round trip."""
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM

    from megatron_kd.config.schema import ParallelConfig
    from megatron_kd.convert.run import hf_to_mcore, mcore_to_hf
    from megatron_kd.runtime.distributed import init_distributed, shutdown

    init_distributed(ParallelConfig(), 0)  # what the converter runs at: TP=1, EP=1
    out = []
    for i, (hf_dir, mcore_dir) in enumerate(models):
        mcore_dir = mcore_dir or str(hf_to_mcore(Path(hf_dir), Path(workdir) / f"mc{i}"))
        diff = _logits_diff(hf_dir, mcore_dir, _config(mcore_dir, []))
        back = mcore_to_hf(Path(mcore_dir), Path(workdir) / f"back{i}")
        original, returned = _tensors(hf_dir), _tensors(back)
        unequal = sorted(k for k in original if k not in returned or not torch.equal(original[k], returned[k]))
        reloaded = AutoModelForCausalLM.from_pretrained(back, local_files_only=True)
        out.append({"mcore_dir": mcore_dir, "max_diff": diff, "unequal": unequal,
                    "extra": sorted(set(returned) - set(original)), "class": type(reloaded).__name__,
                    "config": reloaded.config.to_dict()})
    shutdown()
    return out


def logits_at(workdir: str, hf_dir: str, mcore_dir: str, overrides: list[str]) -> dict:
    """The converted model at another layout (e.g. parallel.ep=2) against transformers."""
    from megatron.core import parallel_state

    from megatron_kd.runtime.distributed import init_distributed, shutdown

    cfg = _config(mcore_dir, overrides)
    init_distributed(cfg.parallel, 0)
    out = {"max_diff": _logits_diff(hf_dir, mcore_dir, cfg),
           "ep": parallel_state.get_expert_model_parallel_world_size()}
    shutdown()
    return out
