"""The vocab-parallel primitives every KD objective shares: a rank's shard of the vocabulary
(`Shard`: where its columns sit, which are real tokens and which TP padding), reductions over
the tensor-parallel group that are no-ops without one, float64 row sums, and the log-softmax
and argmax over the whole sharded vocabulary. Public to the package so that losses.py,
mixed.py, sparse.py, objective.py, the teacher cache and the logit analysis build on one
definition (no module reaches into another's private names)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def group_size(group) -> int:
    """None means no tensor parallelism (not the default world group)."""
    if group is None or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def group_rank(group) -> int:
    if group is None or not dist.is_initialized():
        return 0
    return dist.get_rank(group)


def all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    if group_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


class Shard:
    """Where this rank's columns sit in the vocabulary, and which are real tokens."""

    def __init__(self, width: int, vocab_size: int | None, group, device):
        self.group = group
        self.rank = group_rank(group)
        self.start = self.rank * width
        ids = torch.arange(self.start, self.start + width, device=device)
        self.ids = ids
        self.valid = None if vocab_size is None else ids < vocab_size
        # Padding columns anywhere in the (whole, sharded) vocabulary?
        self.padded = vocab_size is not None and vocab_size < width * group_size(group)

    def mask(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        return x if self.valid is None else x.masked_fill(~self.valid, fill)


def row_sum(x: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Row sums in float64 for the per-token scalar arithmetic that follows. The reduction runs
    in the input's fp32 (torch's cascade summation: ~1e-7 relative); asking torch for a float64
    accumulation instead converts every element and is ~20x slower on CPU."""
    return x.sum(dim=-1, keepdim=keepdim).double()


def log_softmax(x: torch.Tensor, shard: Shard) -> tuple[torch.Tensor, torch.Tensor]:
    """log p and p over the whole (sharded) vocabulary; padded columns get p = 0, log p = -inf."""
    x = shard.mask(x, -math.inf)
    m = x.amax(dim=-1, keepdim=True)
    m = all_reduce(m, dist.ReduceOp.MAX, shard.group)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # a row of -inf stays -inf below
    e = torch.exp(x - m)
    s = all_reduce(e.sum(dim=-1, keepdim=True, dtype=torch.float64), dist.ReduceOp.SUM, shard.group)
    logp = x - m - torch.log(s).float()
    return logp, e / s.float()


def valid_width(shard: Shard) -> int:
    """Local columns before the padding (padding is a suffix of the vocabulary, so a prefix of
    every shard is real)."""
    return shard.ids.numel() if shard.valid is None else int(shard.valid.sum())


def argmax_ids(x: torch.Tensor, shard: Shard) -> torch.Tensor:
    """Global argmax id per row over the (valid columns of the) sharded vocabulary; ties go to
    the lowest id (torch.argmax returns the first maximum; across shards the lowest rank)."""
    local_idx = torch.argmax(x, dim=-1)
    local_max = x.gather(-1, local_idx.unsqueeze(-1)).squeeze(-1)
    best = all_reduce(local_max.clone(), dist.ReduceOp.MAX, shard.group)
    big = torch.iinfo(torch.int64).max
    ids = torch.where(local_max == best, local_idx + shard.start, torch.full_like(local_idx, big))
    return all_reduce(ids, dist.ReduceOp.MIN, shard.group)
