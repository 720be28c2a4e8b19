"""Deterministic micro-batches for one data-parallel rank, resumable from a sample count."""

from __future__ import annotations

from typing import Iterator

import torch


class MicroBatchIterator:
    """Yields this rank's micro-batches in global order.

    Step `s` consumes samples [s*G, (s+1)*G) of the dataset (G = global batch); within a step,
    micro-batch `k` of data-parallel rank `r` holds samples
    s*G + (k*dp + r)*m ... + m (m = micro batch). The position is `consumed_samples`, so a
    resumed run continues with exactly the samples an uninterrupted run would have seen.
    """

    def __init__(self, dataset, micro_batch_size: int, dp_rank: int, dp_size: int,
                 consumed_samples: int = 0):
        self.dataset = dataset
        self.micro = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.consumed_samples = consumed_samples

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        start = self.consumed_samples + self.dp_rank * self.micro
        idx = [(start + i) % len(self.dataset) for i in range(self.micro)]
        self.consumed_samples += self.micro * self.dp_size
        samples = [self.dataset[i] for i in idx]
        batch = {k: torch.stack([torch.as_tensor(s[k]) for s in samples])
                 for k in ("tokens", "labels", "loss_mask", "position_ids")}
        batch["sample_index"] = torch.tensor(idx, dtype=torch.int64)  # the teacher cache's row keys
        return batch


def schedule_iterators(dataset, micro_batch_size: int, dp_rank: int, dp_size: int, chunks: int,
                       consumed_samples: int = 0):
    """The data iterator(s) megatron-core's schedule takes: one, or with virtual pipeline
    stages one per model chunk, each yielding the same micro-batches (every chunk reads
    micro-batch k when it runs its forward of k; the first uses the tokens, the last the labels)."""
    its = [MicroBatchIterator(dataset, micro_batch_size, dp_rank, dp_size, consumed_samples) for _ in range(chunks)]
    return its[0] if chunks == 1 else its


def masked_after(iterator, real: int):
    """`iterator`'s micro-batches, those after the first `real` with an all-zero loss mask: they
    fill a schedule's last group of micro-batches and count for nothing."""
    for i, batch in enumerate(iterator):
        if i >= real:
            batch["loss_mask"] = torch.zeros_like(batch["loss_mask"])
        yield batch
