"""The unigram "teacher": the training corpus's token frequencies as a context-free target
(`teacher.unigram: true`). It carries no knowledge beyond how often each token occurs, so a
gain it gives at some α is what smoothing the student's targets does; a real teacher's gain
counts as knowledge only beyond it (docs/STUDY.md, study v3's smoothing control).

p(v) = (count(v) + 1) / (N + V) over the V real tokens (add-one: no token gets probability 0,
so the forward KL stays finite), counted over every data.train prefix: pooled when the blend is
by size (no data.train_weights), else each prefix's distribution weighted as the blend mixes
them. Every token of a prefix counts, documents held out by data.split included.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from megatron_kd.data.datasets import read_index
from megatron_kd.errors import ConfigError


def unigram_log_probs(prefixes: list[str], weights: list[float] | None, vocab_size: int) -> np.ndarray:
    """log p over the real vocabulary, float64 [vocab_size]; counted once per process for the
    same files (the run's teacher and its checkpoints' identity both ask)."""
    stamp = tuple((str(p), *(lambda st: (st.st_size, st.st_mtime_ns))(Path(f"{p}.bin").stat()))
                  for p in prefixes)
    return _counted(stamp, tuple(weights) if weights else None, vocab_size).copy()


@functools.lru_cache(maxsize=4)
def _counted(stamp: tuple, weights: tuple | None, vocab_size: int) -> np.ndarray:
    prefixes = [s[0] for s in stamp]
    weights = list(weights) if weights else None
    pooled = not weights  # a blend by size: the prefixes' tokens in proportion to their sizes
    weights = weights or [1.0] * len(prefixes)
    mix, total = np.zeros(vocab_size, dtype=np.float64), np.zeros(vocab_size, dtype=np.int64)
    for prefix, w in zip(prefixes, weights):
        _, _, dtype = read_index(Path(f"{prefix}.idx"), "data.train")
        data = np.memmap(Path(f"{prefix}.bin"), dtype=dtype, mode="r")
        counts = np.zeros(vocab_size, dtype=np.int64)
        step = 1 << 24
        for i in range(0, len(data), step):  # in slices: a corpus need not fit in memory
            part = np.asarray(data[i:i + step], dtype=np.int64)
            if part.size and (part.min() < 0 or part.max() >= vocab_size):
                raise ConfigError(f"data.train {prefix} has token ids outside the model's vocabulary "
                                  f"({vocab_size}); the unigram teacher counts ids below model.vocab_size")
            counts += np.bincount(part, minlength=vocab_size)
        total += counts
        mix += w / sum(weights) * (counts + 1) / (counts.sum() + vocab_size)
    if pooled:
        mix = (total + 1) / (total.sum() + vocab_size)
    return np.log(mix)


def unigram_identity(logp: np.ndarray) -> dict:
    """What a checkpoint records as its teacher: the distribution's checksum."""
    return {"unigram": hashlib.sha256(np.ascontiguousarray(logp, dtype=np.float64).tobytes()).hexdigest()[:16]}


def unigram_loss(logp: np.ndarray, prefix: str) -> float:
    """The unigram teacher's own loss (nats/token) on a validation set: every token of it. (A
    model is scored on the set's first eval_samples sequences; for a context-free teacher the
    whole set is the steadier number, and the sequences' order does not matter.)"""
    _, _, dtype = read_index(Path(f"{prefix}.idx"), "a validation set")
    data = np.memmap(Path(f"{prefix}.bin"), dtype=dtype, mode="r")
    return float(-logp[np.asarray(data, dtype=np.int64)].mean())
