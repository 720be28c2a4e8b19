"""`mkd analyze TEACHER STUDENT`: the paper's logit analysis on a validation set — entropy of
each model, top-1 agreement, KL(teacher‖student), KL(student‖teacher) and JS between them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megatron_kd.checkpoint.checkpointer import load_checkpoint
from megatron_kd.config.schema import RunConfig
from megatron_kd.data.batches import MicroBatchIterator
from megatron_kd.data.datasets import build_datasets, load_tokenizer
from megatron_kd.distill.losses import kd_loss
from megatron_kd.distill.options import KDOptions
from megatron_kd.distill.vocab_parallel import Shard, argmax_ids, log_softmax, valid_width
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.training.loop import teacher_chunks
from megatron_kd.training.resolve import resolve_run
from megatron_kd.training.setup import TrainState, build_ddp_model


def run_analyze(cfg: RunConfig, student_ckpt: Path, out_json: Path | None) -> dict:
    from megatron.core import parallel_state

    if cfg.parallel.pp != 1:
        raise ConfigError("mkd analyze runs with parallel.pp=1 (any TP); set parallel.pp=1 parallel.vpp=1")
    run = resolve_run(cfg, resume=False)
    cfg = run.cfg
    state = TrainState(model=build_ddp_model(cfg, teacher_chunks(run)), optimizer=None, scheduler=None)
    load_checkpoint(student_ckpt, state, load_optimizer=False)
    pair = state.model[0].module
    pair.eval()
    tp_group = parallel_state.get_tensor_model_parallel_group()
    dp = parallel_state.get_data_parallel_world_size()
    _, valid = build_datasets(cfg, load_tokenizer(cfg), cfg.train.global_batch_size)
    V = cfg.model.vocab_size
    results = {}
    for name, (ds, n) in valid.items():
        it = MicroBatchIterator(ds, cfg.train.micro_batch_size, parallel_state.get_data_parallel_rank(), dp)
        sums = torch.zeros(7, dtype=torch.float64)
        for _ in range(max(1, n // (cfg.train.micro_batch_size * dp))):
            b = next(it)
            with torch.no_grad():
                s_logits, t_logits = pair(b["tokens"], b["position_ids"], None)
                shard = Shard(s_logits.shape[-1], V, tp_group, s_logits.device)
                mask = b["loss_mask"].float().t()  # the pair's logits are sequence-major [s, b, V/TP]
                ent = []
                for logits in (t_logits, s_logits):
                    lp, p = log_softmax(logits.float(), shard)
                    e = -torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(-1)
                    if torch.distributed.get_world_size(tp_group) > 1:
                        torch.distributed.all_reduce(e, group=tp_group)
                    ent.append((e * mask).sum())
                nv = valid_width(shard)  # padding columns never win
                agree = (argmax_ids(s_logits[..., :nv], shard) == argmax_ids(t_logits[..., :nv], shard)).float()
                kw = dict(loss_mask=mask, tp_group=tp_group)
                fkl = kd_loss(s_logits, t_logits, KDOptions("forward_kl", vocab_size=V), **kw).sum()
                rkl = kd_loss(s_logits, t_logits, KDOptions("reverse_kl", vocab_size=V), **kw).sum()
                js = kd_loss(s_logits, t_logits, KDOptions("jsd", jsd_beta=0.5, vocab_size=V), **kw).sum()
            sums += torch.tensor([ent[0], ent[1], (agree * mask).sum(), fkl, rkl, js, mask.sum()],
                                 dtype=torch.float64)
        torch.distributed.all_reduce(sums, group=parallel_state.get_data_parallel_group())
        c = sums[-1].clamp(min=1)
        keys = ["teacher_entropy", "student_entropy", "top1_agreement", "kl_teacher_student",
                "kl_student_teacher", "js"]
        results[name] = {k: (sums[i] / c).item() for i, k in enumerate(keys)} | {"tokens": int(sums[-1])}
    if out_json is not None and torch.distributed.get_rank() == 0:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_json, json.dumps(results, indent=2))
    return results
