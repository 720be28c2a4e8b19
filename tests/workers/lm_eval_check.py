"""lm-eval adapter loglikelihoods against the model's own cross-entropy path (one rank)."""

from __future__ import annotations


def compare(workdir: str, checkpoint: str, tp: int = 1) -> dict:
    from pathlib import Path

    import torch
    from lm_eval.api.instance import Instance
    from megatron.core import parallel_state

    from megatron_kd.checkpoint.model_io import load_model_weights
    from megatron_kd.checkpoint.refs import read_state
    from megatron_kd.config import load_config
    from megatron_kd.data.tokenizer import Tokenizer
    from megatron_kd.evals.lm_eval_adapter import MegatronKDLM
    from megatron_kd.models.gpt import build_gpt_model
    from megatron_kd.runtime.distributed import init_distributed, shutdown

    ckpt = Path(checkpoint)
    padded = read_state(ckpt)["padded_vocab_size"]
    cfg = load_config(ckpt / "config.yaml", [f"parallel.tp={tp}", f"model.padded_vocab_size={padded}"])
    init_distributed(cfg.parallel, 0)
    model = build_gpt_model(cfg.model, cfg.parallel, cfg.precision)
    load_model_weights(model, ckpt)
    model.eval()
    tok = Tokenizer(cfg.data.tokenizer)
    lm = MegatronKDLM(model, tok, cfg.train.seq_length, batch_size=2,
                      tp_group=parallel_state.get_tensor_model_parallel_group())
    pairs = [("The keyword that defines a function is", " def"),
             ("Exceptions are raised with the", " raise statement"),
             ("", "Hello world")]
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    ours = lm.loglikelihood(reqs)
    worst = 0.0
    for (ctx, cont), (ll, _) in zip(pairs, ours):
        c = [tok.eod] + tok.encode(ctx) if ctx else [tok.eod]
        ids = c + tok.encode(cont)
        tokens = torch.tensor([ids[:-1]])
        labels = torch.tensor([ids[1:]])
        with torch.no_grad():  # the training/eval path: GPTModel with labels -> vocab-parallel CE
            ce = model(tokens, torch.arange(tokens.shape[1])[None], None, labels=labels)[0]
        ref = -ce[len(c) - 1:].sum().item()
        worst = max(worst, abs(ref - ll))
    text = "Exceptions are raised with the raise statement and handled by try."
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    ids = [tok.eod] + tok.encode(text)
    with torch.no_grad():
        ce = model(torch.tensor([ids[:-1]]), torch.arange(len(ids) - 1)[None], None,
                   labels=torch.tensor([ids[1:]]))[0]
    out = {"worst_ll_diff": worst, "rolling_diff": abs(rolling + ce.sum().item()),
           "lls": [x for x, _ in ours]}
    shutdown()
    return out
