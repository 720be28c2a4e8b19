"""What megatron-core's unfused attention keeps for backward, measured (one gloo rank on CPU):
the bytes of saved tensors shaped like attention scores (last two dims s x s), one forward of a
tiny GPTModel per recompute setting and dtype."""

from __future__ import annotations


def saved_score_bytes(workdir: str, settings: list[list[str]], seq: int, batch: int) -> dict:
    import torch
    from torch.autograd.graph import saved_tensors_hooks

    from megatron_kd.config import load_config
    from megatron_kd.models.gpt import build_gpt_model
    from megatron_kd.runtime.distributed import init_distributed, shutdown

    cfg = load_config("models/tiny", purpose="model")
    init_distributed(cfg.parallel, 0)
    out = {}
    for recompute, dtype in settings:
        cfg = load_config("models/tiny", [f"precision.dtype={dtype}"], purpose="model")
        model = build_gpt_model(cfg.model, cfg.parallel, cfg.precision, init_seed=1, recompute=(recompute, 1))
        model.train()
        storages = {}

        def keep(t):
            if t.dim() >= 2 and t.shape[-1] == seq and t.shape[-2] == seq:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        tokens = torch.randint(0, cfg.model.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
        with saved_tensors_hooks(keep, lambda t: t):
            logits = model(tokens, torch.arange(seq).expand(batch, -1), None)
        logits.float().sum().backward()  # the recomputed forward runs here, after the hooks
        out[f"{recompute}/{dtype}"] = sum(storages.values())
    shutdown()
    return out
