"""Bodies of the multi-process parity tests (run by tests.distributed on gloo ranks).

Weights and gradients move between layouts through megatron-core dist_checkpointing, so a
TP=1 reference is compared with TP=2 / PP=2 shards element by element after resharding.
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 250  # not a multiple of the padding unit: padded slots must stay inert


def _cfg(tp=1, pp=1, extra=(), **overrides):
    from megatron_kd.config import load_config

    ov = [f"parallel.tp={tp}", f"parallel.pp={pp}", f"model.vocab_size={VOCAB}",
          "model.num_layers=4", "model.make_vocab_size_divisible_by=64",
          "train.seq_length=16", "train.micro_batch_size=2"]
    ov += [f"{k}={v}" for k, v in overrides.items()] + list(extra)
    return load_config("train/tiny-mock", ov)


def _relayout(cfg, seed):
    from megatron.core import parallel_state

    from megatron_kd.runtime.distributed import init_distributed, seed_everything

    if not torch.distributed.is_initialized():
        init_distributed(cfg.parallel, seed)
        return
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=cfg.parallel.tp, pipeline_model_parallel_size=cfg.parallel.pp)
    seed_everything(seed)


def _batch():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (2, 16), generator=g)
    labels = torch.randint(0, VOCAB, (2, 16), generator=g)
    pos = torch.arange(16).unsqueeze(0).expand(2, -1).contiguous()
    return tokens, labels, pos


def _grads_into_weights(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))


def _max_grad_diff(model, reference_model) -> float:
    worst = 0.0
    ref = dict(reference_model.named_parameters())
    for name, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        worst = max(worst, (g - ref[name].detach()).abs().max().item())
    return worst


def _gather_vocab(logits):
    from megatron.core import parallel_state

    group = parallel_state.get_tensor_model_parallel_group()
    parts = [torch.empty_like(logits) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(parts, logits.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def tp_pp_forward_backward(workdir: str) -> dict:
    """TP=2 and PP=2 against TP=1 with the same weights: logits, loss and every gradient."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_kd.checkpoint.model_io import load_model_weights, save_model_weights
    from megatron_kd.models.gpt import build_gpt_model
    from megatron_kd.runtime.distributed import shutdown

    work = Path(workdir)
    tokens, labels, pos = _batch()
    result = {}

    # Reference: TP=1, PP=1 (the two ranks are data-parallel replicas).
    cfg = _cfg()
    _relayout(cfg, seed=11)
    ref = build_gpt_model(cfg.model, cfg.parallel, cfg.precision)
    with torch.no_grad():
        ref_logits = ref(tokens, pos, None)
    ref_loss = ref(tokens, pos, None, labels=labels).sum()
    ref_loss.backward()
    save_model_weights(ref, work / "weights_tp1")
    _grads_into_weights(ref)
    save_model_weights(ref, work / "grads_tp1")
    result["padded_vocab"] = ref_logits.shape[-1]

    # TP=2: same weights loaded across the layout change.
    cfg = _cfg(tp=2)
    _relayout(cfg, seed=99)
    model = build_gpt_model(cfg.model, cfg.parallel, cfg.precision)
    load_model_weights(model, work / "weights_tp1")
    with torch.no_grad():
        logits = _gather_vocab(model(tokens, pos, None))
    result["tp2_logits_max_diff"] = (logits - ref_logits).abs().max().item()
    loss = model(tokens, pos, None, labels=labels).sum()
    loss.backward()
    result["tp2_loss_diff"] = abs(loss.item() - ref_loss.item())
    ref_grads = build_gpt_model(cfg.model, cfg.parallel, cfg.precision)
    load_model_weights(ref_grads, work / "grads_tp1")
    result["tp2_grad_max_diff"] = _max_grad_diff(model, ref_grads)

    # PP=2 through megatron-core's pipeline schedule.
    cfg = _cfg(pp=2)
    _relayout(cfg, seed=5)
    model = build_gpt_model(cfg.model, cfg.parallel, cfg.precision)
    load_model_weights(model, work / "weights_tp1")
    model.config.finalize_model_grads_func = None
    losses = []

    def forward_step(_it, m):
        out = m(tokens, pos, None, labels=labels)

        def loss_func(output_tensor):
            s = output_tensor.sum()
            losses.append(s.detach())
            return s, {"loss": s.detach()}
        return out, loss_func

    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([None]),
                                model=[model], num_microbatches=1, seq_length=16,
                                micro_batch_size=2, forward_only=False)
    loss_t = torch.tensor([losses[0].item() if losses else 0.0], dtype=torch.float64)
    torch.distributed.broadcast(loss_t, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                group=parallel_state.get_pipeline_model_parallel_group())
    result["pp2_loss_diff"] = abs(loss_t.item() - ref_loss.item())
    ref_grads = build_gpt_model(cfg.model, cfg.parallel, cfg.precision)
    load_model_weights(ref_grads, work / "grads_tp1")
    result["pp2_grad_max_diff"] = _max_grad_diff(model, ref_grads)
    result["pp2_stage_params"] = sum(p.numel() for p in model.parameters())
    shutdown()
    return result


def training_matches_across_layouts(workdir: str, tp: int, pp: int, steps: int = 3,
                                    sequence_parallel: bool = False,
                                    qk_layernorm: bool = False, data: tuple = ()) -> dict:
    """Train `steps` steps at TP=1 (all ranks data-parallel) and at TP=tp x PP=pp from the same
    weights and data order (`data`: overrides naming a real corpus; default mock); report both
    loss trajectories and the validation losses after them."""
    from megatron.core import parallel_state

    from megatron_kd.checkpoint.model_io import save_model_weights
    from megatron_kd.data.batches import MicroBatchIterator
    from megatron_kd.data.datasets import build_datasets, load_tokenizer
    from megatron_kd.runtime.distributed import shutdown
    from megatron_kd.training.evaluate import evaluate
    from megatron_kd.training.loop import kd_step_context, teacher_chunks, train_step
    from megatron_kd.training.resolve import resolve_run
    from megatron_kd.training.setup import build_train_state

    work = Path(workdir)
    losses = {}
    for name, (t, p) in {"reference": (1, 1), "parallel": (tp, pp)}.items():
        cfg = _cfg(tp=t, pp=p, **{"train.global_batch_size": 8, "train.steps": steps,
                                  "run.dir": str(work / name), "train.warmup_steps": 0,
                                  "model.qk_layernorm": qk_layernorm,
                                  "parallel.sequence_parallel": sequence_parallel and t > 1},
                   extra=data)
        _relayout(cfg, seed=21 if name == "reference" else 77)
        run = resolve_run(cfg, resume=False)
        cfg, ctx = run.cfg, kd_step_context(run)
        state = build_train_state(cfg, init_weights=None if name == "reference" else work / "w0",
                                  teacher=teacher_chunks(run))
        if name == "reference":
            save_model_weights(state.model[0], work / "w0")
        train_ds, valid = build_datasets(cfg, load_tokenizer(cfg), steps * 8)
        it = MicroBatchIterator(train_ds, 2, parallel_state.get_data_parallel_rank(),
                                parallel_state.get_data_parallel_world_size())
        steps_out = [train_step(cfg, state, it, ctx) for _ in range(steps)]
        losses[name] = [m["loss"] for m in steps_out]
        losses[f"{name}_kd"] = [m.get("kd loss") for m in steps_out]
        losses[f"{name}_valid"] = evaluate(cfg, state.model, valid)
    shutdown()
    return losses
