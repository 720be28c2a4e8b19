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


class LabelColumns:
    """Where each row's label sits on this rank's vocabulary shard: `here` (this rank holds it)
    and `col` (its column, clamped so reads stay in bounds). The cross entropy's two touches of
    the label, shared by every objective: reading its logit, and the one-hot of the gradient."""

    def __init__(self, labels: torch.Tensor, shard: "Shard"):
        width = shard.ids.numel()
        local = labels.reshape(-1) - shard.start
        self.here = (local >= 0) & (local < width)
        self.col = local.clamp(0, width - 1)

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """x at each row's label where this rank holds it, else 0: summed over the group, every
        rank has every row's."""
        picked = x.gather(-1, self.col.unsqueeze(-1)).squeeze(-1)
        return torch.where(self.here, picked, torch.zeros_like(picked))

    def subtract(self, g: torch.Tensor, amount: torch.Tensor) -> None:
        """g[row, label] -= amount[row] on the rows whose label this rank holds."""
        rows = self.here.nonzero().squeeze(-1)
        g[rows, self.col[rows]] -= amount[rows].to(g.dtype)


def cross_entropy(z: torch.Tensor, labels: LabelColumns, group, grad_out: torch.Tensor | None = None,
                  weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron-core's vocab-parallel cross entropy per row (softmax over every local column,
    padding included), float64, with the pieces other row sums may reuse: (CE, z - row max, its
    exp; fp32). With `grad_out`: weight·(softmax - one-hot of the label) written there. The
    objectives that take CE and KD from one exp per model read the label through `labels` too."""
    m = all_reduce(z.amax(-1), dist.ReduceOp.MAX, group)
    t = torch.sub(z, m.float().unsqueeze(-1))  # fp32 whatever z's dtype: one pass
    e = torch.exp(t)
    sums = all_reduce(torch.stack([row_sum(e), labels.read(t).double()]), dist.ReduceOp.SUM, group)
    if grad_out is not None:
        torch.mul(e, (weight.double() / sums[0]).float().unsqueeze(-1), out=grad_out)
        labels.subtract(grad_out, weight)
    return torch.log(sums[0]) - sums[1], t, e


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
