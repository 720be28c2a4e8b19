"""Validation loss on named sets through megatron-core's forward-only schedule."""

from __future__ import annotations

import math

import torch

from megatron_kd.config.schema import RunConfig
from megatron_kd.data.batches import masked_after, schedule_iterators
from megatron_kd.distill.model import DistillationModel
from megatron_kd.training.steps import (
    StepContext,
    broadcast_from_last_stage,
    make_forward_step,
    reduce_reports,
)


def evaluate(cfg: RunConfig, model_chunks: list, valid_sets: dict) -> dict[str, float]:
    """Mean per-token LM loss of each validation set (the same number on every rank).

    Each set's first `n` sequences (n from build_datasets, rounded down to whole micro-batches
    over the data-parallel ranks) are evaluated, in order, every time, at any layout. (With
    virtual pipeline stages the schedule runs micro-batches in groups of PP: the last group is
    filled with micro-batches whose loss mask is zero.)
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    model_chunks = student_chunks(model_chunks)
    forward_step = make_forward_step(StepContext())

    dp = parallel_state.get_data_parallel_world_size()
    micro = cfg.train.micro_batch_size
    for chunk in model_chunks:
        chunk.eval()
    results = {}
    try:
        for name, (dataset, n) in valid_sets.items():
            real = num_micro = max(1, n // (micro * dp))
            it = schedule_iterators(dataset, micro, parallel_state.get_data_parallel_rank(), dp, len(model_chunks))
            if len(model_chunks) > 1:  # interleaved: groups of PP micro-batches
                pp = parallel_state.get_pipeline_model_parallel_world_size()
                num_micro = -(-real // pp) * pp
                it = [masked_after(chunk_it, real) for chunk_it in it]
            with torch.no_grad():
                reports = get_forward_backward_func()(
                    forward_step_func=forward_step, data_iterator=it, model=model_chunks,
                    num_microbatches=num_micro, seq_length=cfg.train.seq_length,
                    micro_batch_size=micro, forward_only=True)
            value = reduce_reports(reports).get("lm loss", math.nan) \
                if parallel_state.is_pipeline_last_stage() else math.nan
            results[name] = broadcast_from_last_stage({"v": value}, ["v"])["v"]
    finally:
        for chunk in model_chunks:
            chunk.train()
    return results


def student_chunks(model_chunks: list) -> list:
    """The student alone (validation is the student's LM loss; no teacher forward)."""
    out = []
    for chunk in model_chunks:
        inner = getattr(chunk, "module", chunk)
        out.append(inner.module if isinstance(inner, DistillationModel) else chunk)
    return out
