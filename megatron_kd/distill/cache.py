"""The teacher-signal cache: the frozen teacher's outputs over a student's training stream,
written once (`mkd teacher-cache`, training/teacher_cache.py) and read by every KD run of a
sweep that trains on that stream (`teacher.cache=DIR`) instead of running the teacher again.

Rows are keyed by the global sample index of megatron-core's GPT dataset stream, so any student
layout, batch size or resume point reads the same rows. Per token a row holds:
- top-K caches (`--top-k K`): the teacher's K most likely token ids and their
  log-probabilities (ties at the K-th place go to the lowest id, as the online top-k),
  the log of the probability mass outside them, the log-probability of the label (megatron-core's
  CE convention: every column, padding included) and the entropy (real columns);
- full caches (`--top-k all`): the log-probability of every real token, label and entropy;
- sampled caches (`--sample N`, "random-sampling KD", Anshumann et al. 2025): N draws per token
  from the teacher's distribution (T = 1, the teacher itself as the proposal, so every draw has
  weight 1), stored as the drawn ids with log(count / N) in N slots (the slots no draw filled
  hold the teacher's most likely undrawn ids at log 0 = -inf), the label and the entropy. The
  sparse objective, renormalised, then has the target count / N on the drawn ids and 0
  elsewhere: E[count / N] = q, so the KD gradient p - count / N is an unbiased estimate of full
  forward KL's p - q (a top-K cache's p - q_K / Q is not). The reported KD loss is the KL to the
  draws' empirical distribution, not to the teacher.

What a cache was made from and whether a run may read it (fingerprint, manifest, shard checks,
the KD options it serves) is distill/cache_checks.py, re-exported here.

How they are stored (value precision, id width, zstd) is the manifest's encoding
(distill/cache_encoding.py, with each encoding's error bound); the reader decodes to float32
values and int32 ids, so nothing downstream depends on it.

The student side turns a micro-batch's rows back into teacher logits for its own vocabulary
shard (`dense_teacher_logits`) and runs the online objective on them, so the TP convention, the
one-pass objective and its tests carry over. What that gives exactly:
- full caches: everything (log-probabilities are logits up to a constant: every kind, any T);
- top-K caches: forward KL with `kd.top_k <= K` (renormalised, or with `kd.other_bucket`: the
  mass outside the K is spread over the other real tokens, so the teacher's kept probabilities
  and its "other" mass are exact; no spread token can outrank the K-th), at T = 1; and `hard`
  (the teacher's arg-max) at any T. The rest is refused before the run starts (`check_kd`).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_kd.distill.cache_checks import (  # noqa: F401 (re-exported: the cache's one entry point)
    WRITER_LOCK,
    check_kd,
    check_run,
    check_same_data,
    check_shard,
    check_window_keys,
    differing_fields,
    fingerprint,
    fingerprint_difference,
    load_bounded,
    read_manifest,
    wait_for,
    writer_state,
)
from megatron_kd.distill.cache_encoding import Encoding, stored_bytes
from megatron_kd.distill.cache_layout import (  # noqa: F401 (re-exported)
    COMPLETE,
    MANIFEST,
    SHARD_INDEX,
    complete_shards,
    first_gap,
    shard_dir,
)
from megatron_kd.distill.cache_window import refuse_deleted
from megatron_kd.distill.vocab_parallel import LabelColumns, Shard, all_reduce
from megatron_kd.errors import ConfigError

log = logging.getLogger("megatron_kd")
OPEN_SHARDS = 4  # memory-mapped shards a reader keeps open (each holds a file and a mapping per field)
PADDING_LOGIT = -1.0e4  # teacher logits of padding columns: never counted by the KD loss
TOPK_FIELDS = ("ids", "logp", "other_logp", "label_logp", "entropy")  # the rows' fields, decoded
FULL_FIELDS = ("logp", "label_logp", "entropy")


# --- writing: the rows of one micro-batch -----------------------------------------------------

ROW_BLOCK_LOGITS = 1 << 20  # teacher_rows' CPU work in blocks of about this many logits (4 MiB in fp32)


def teacher_rows(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, top_k: int | None,
                 group, sample_generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Cache rows `[b, s, ...]` from this TP rank's teacher logits `[s, b, V/TP]` (sequence-major)
    and labels `[s, b]`; identical on every rank of `group`. With `sample_generator`: a sampled
    cache's rows, `top_k` draws per token from that generator (the same on every rank)."""
    s_len, b, width = logits.shape
    z = logits.float().reshape(-1, width)
    lab = labels.reshape(-1)
    shard = Shard(width, vocab_size, group, z.device)
    tp = dist.get_world_size(group) if group is not None and dist.is_initialized() else 1
    # Every row is its own token, so the work goes in blocks of rows (the same on every rank, the
    # same bits as one block): on CPU a block's float64 copies and temporaries stay in cache,
    # where one [tokens, V] block made the cache job 3x slower than it needs to be. A sampled
    # cache's draws take the whole batch at once (the generator's stream is the batch's).
    # Blocks of equal size (none below `block` rows, no lone-row tail: torch splits a single row's
    # sum over threads, in another order than a block's rows); an empty batch is one empty block.
    n = z.shape[0]
    blocks = 1 if z.is_cuda or sample_generator is not None else max(1, n // max(16, ROW_BLOCK_LOGITS // width))
    bounds = [n * i // blocks for i in range(blocks + 1)]
    parts = [_block_rows(z[i:j], lab[i:j], shard, vocab_size, top_k, group, tp, sample_generator)
             for i, j in zip(bounds, bounds[1:])]
    rows = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
    # sequence-major rows (t * b + i) -> sample-major [b, s, ...]
    return {k: v.reshape(s_len, b, *v.shape[1:]).transpose(0, 1).contiguous() for k, v in rows.items()}


def _block_rows(z: torch.Tensor, lab: torch.Tensor, shard: Shard, vocab_size: int, top_k: int | None, group,
                tp: int, sample_generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """teacher_rows for a block of tokens: z `[n, V/TP]`, labels `[n]`, rows `[n, ...]`."""
    width = z.shape[1]
    # label log-probability in megatron-core's CE convention: softmax over every column
    m_all = all_reduce(z.amax(-1), dist.ReduceOp.MAX, group)
    se_all = all_reduce(torch.exp(z - m_all.unsqueeze(-1)).sum(-1, dtype=torch.float64), dist.ReduceOp.SUM, group)
    label_z = all_reduce(LabelColumns(lab, shard).read(z), dist.ReduceOp.SUM, group)
    label_logp = label_z - m_all - torch.log(se_all).float()
    # log-probabilities over the real columns: with no padding column anywhere (the same answer on
    # every rank) they are the columns above, and their max and sum are the ones just reduced
    if shard.padded:
        zr = shard.mask(z, -math.inf)
        m = all_reduce(zr.amax(-1), dist.ReduceOp.MAX, group)
        se = all_reduce(torch.exp(zr - m.unsqueeze(-1)).sum(-1, dtype=torch.float64), dist.ReduceOp.SUM, group)
    else:
        zr, m, se = z, m_all, se_all
    logp = zr - (m + torch.log(se).float()).unsqueeze(-1)
    p = torch.exp(logp)
    entropy = -all_reduce(torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1, dtype=torch.float64),
                           dist.ReduceOp.SUM, group).float()
    rows = {"label_logp": label_logp, "entropy": entropy}
    if top_k is None:
        rows["logp"] = _gather_columns(logp, group, tp)[:, :vocab_size]
    elif sample_generator is not None:
        rows.update(_sampled(_gather_columns(logp, group, tp)[:, :vocab_size], top_k, sample_generator))
    else:
        k_local = min(top_k, width)
        cand_v, cand_i = _top_k_lowest_id(logp, k_local)
        cand_i = cand_i + shard.start
        if tp > 1:
            cand_v = torch.cat(_all_gather(cand_v, group, tp), dim=-1)
            cand_i = torch.cat(_all_gather(cand_i, group, tp), dim=-1)
        order = torch.argsort(cand_i, dim=-1, stable=True)  # by id, then stably by value
        cand_v, cand_i = cand_v.gather(1, order), cand_i.gather(1, order)
        order = torch.argsort(cand_v, dim=-1, descending=True, stable=True)[:, :top_k]
        top_v, top_i = cand_v.gather(1, order), cand_i.gather(1, order)
        if top_v.shape[1] < top_k:
            raise ConfigError(f"--top-k {top_k} is larger than the vocabulary; use --top-k all")
        inside = (top_i >= shard.start) & (top_i < shard.start + width)
        pos = torch.where(inside, top_i - shard.start, torch.full_like(top_i, width))  # width: spare column
        kept = torch.zeros(p.shape[0], width + 1, dtype=torch.bool, device=p.device)
        kept = kept.scatter_(1, pos, True)[:, :width]
        rest = all_reduce(torch.where(kept, torch.zeros_like(p), p).sum(-1, dtype=torch.float64),
                           dist.ReduceOp.SUM, group)
        rows.update(ids=top_i.to(torch.int32), logp=top_v, other_logp=torch.log(rest).float())
    return rows


def _sampled(logp: torch.Tensor, draws: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`draws` samples per row of the teacher's distribution: the drawn ids (most drawn first,
    then by teacher probability) with log(count / draws), the rest of the slots filled with the
    most likely undrawn ids at -inf, and no mass outside (the draws' estimate sums to 1)."""
    p = torch.exp(logp.double())
    drawn = torch.multinomial(p.float().cpu(), draws, replacement=True, generator=generator).to(p.device)
    counts = torch.zeros_like(p).scatter_add_(1, drawn, torch.ones_like(drawn, dtype=p.dtype))
    order = torch.topk(counts + p, draws, dim=-1).indices  # p < 1: counts first, then probability
    kept = counts.gather(1, order)
    value = torch.where(kept > 0, torch.log(kept / draws), torch.full_like(kept, -math.inf))
    return {"ids": order.to(torch.int32), "logp": value.float(),
            "other_logp": torch.full((p.shape[0],), -math.inf)}


def _top_k_lowest_id(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row, ties at the boundary broken towards the lowest column
    (what a stable descending sort would keep), as (values, columns) in column order. topk finds
    the threshold; a full sort of every row cost 5x more and was most of the cache job's time."""
    t = torch.topk(x, k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    keep = x >= t
    if int(keep.sum()) != keep.shape[0] * k:  # a tie at some row's boundary (rare): lowest columns first
        above = x > t
        tied = keep & ~above
        need = k - above.sum(-1, keepdim=True)
        keep = above | (tied & (torch.cumsum(tied, dim=-1) <= need))
    cols = keep.nonzero()[:, 1].reshape(x.shape[0], k)  # row-major: each row's columns ascending
    return x.gather(1, cols), cols


def _all_gather(t: torch.Tensor, group, tp: int) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(out, t.contiguous(), group=group)
    return out


def _gather_columns(x: torch.Tensor, group, tp: int) -> torch.Tensor:
    return x if tp == 1 else torch.cat(_all_gather(x, group, tp), dim=-1)


# --- reading ----------------------------------------------------------------------------------

class TeacherCache:
    """A complete cache directory, its shards memory-mapped on first use."""

    def __init__(self, root: str | Path, wait_s: float = 0.0, reader=None):
        self.root = Path(root)
        self.reader = reader  # cache_window.Reader: this rank's registration in a windowed cache
        self.wait_s = wait_s  # teacher.cache_wait_s: a shard not written yet is waited for this long
        if wait_s > 0 and not wait_for(self.root / MANIFEST, wait_s):
            raise ConfigError(f"teacher cache {self.root} has no manifest after teacher.cache_wait_s="
                              f"{wait_s:g}s; {writer_state(self.root)}")
        self.manifest = read_manifest(self.root)
        self.top_k = self.manifest["fingerprint"]["top_k"]
        self.sampled = bool(self.manifest["fingerprint"].get("sampled"))
        self.rows_per_shard = self.manifest["shard_rows"]
        self.vocab_size = self.manifest["fingerprint"]["vocab_size"]
        self.encoding = Encoding.from_manifest(self.manifest, self.root / MANIFEST)
        self.files = self.encoding.files(self.top_k)
        self._maps: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._checked: set[int] = set()

    def _shard(self, j: int) -> dict[str, np.ndarray]:
        if j in self._maps:
            self._maps.move_to_end(j)
        else:
            while len(self._maps) >= OPEN_SHARDS:  # samples come in order: a few maps suffice
                self._maps.popitem(last=False)
            d = shard_dir(self.root, j)
            refuse_deleted(self.root, j)
            if self.reader is not None:  # before waiting: the writer's window moves with the readers
                self.reader.moved_to(j)
            if self.wait_s > 0 and not wait_for(d / SHARD_INDEX, self.wait_s):
                raise ConfigError(f"teacher cache {self.root}: shard {d.name} was not written within "
                                  f"teacher.cache_wait_s={self.wait_s:g}s; {writer_state(self.root)}")
            if j not in self._checked:  # checksums, shapes and ids, the first time a shard is used
                check_shard(self.root, self.manifest, j)
                self._checked.add(j)
            rows = min(self.rows_per_shard, self.manifest["num_samples"] - j * self.rows_per_shard)
            width = self.vocab_size if self.top_k == "all" else self.top_k
            fix = "check it with `mkd teacher-cache --verify`"
            self._maps[j] = {f: load_bounded(self.root, self.encoding, d / self.encoding.file_name(f),
                                              stored_bytes(self.encoding.shape(f, rows, self.manifest["seq_length"],
                                                                               width), dtype), fix)
                             for f, dtype in self.files.items()}
        return self._maps[j]

    def rows(self, sample_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows `[b, s, ...]` of these global sample indices (float32 values, int32 ids)."""
        out = {f: [] for f in self.files}
        for i in sample_index.tolist():
            j, r = divmod(int(i), self.rows_per_shard)
            shard = self._shard(j)
            for f in self.files:
                out[f].append(np.array(shard[f][r]))
        return self.encoding.decode({f: np.stack(v) for f, v in out.items()})


def dense_teacher_logits(rows: dict[str, torch.Tensor], shard_start: int, width: int, vocab_size: int,
                         device) -> torch.Tensor:
    """Teacher logits `[s, b, width]` for this TP rank's vocabulary columns from cache rows: the
    cached log-probabilities; in a top-K cache the other real columns share the mass outside the
    K equally; padding columns PADDING_LOGIT."""
    logp = rows["logp"]
    b, s = logp.shape[:2]
    cols = torch.arange(shard_start, shard_start + width)
    real = cols < vocab_size
    if "ids" not in rows:  # full cache
        out = torch.full((b, s, width), PADDING_LOGIT, dtype=torch.float32)
        n_real = int(real.sum())
        out[..., :n_real] = logp[..., shard_start:shard_start + n_real]
    else:
        k = logp.shape[-1]
        spread = rows["other_logp"] - math.log(max(1, vocab_size - k))  # [b, s]
        out = torch.where(real, spread.unsqueeze(-1), torch.tensor(PADDING_LOGIT)).float().contiguous()
        ids = rows["ids"].long()
        inside = (ids >= shard_start) & (ids < shard_start + width)
        pos = torch.where(inside, ids - shard_start, torch.full_like(ids, width))  # width: a spare column
        wide = torch.cat([out, torch.zeros(b, s, 1)], dim=-1)
        wide.scatter_(-1, pos, logp.float())
        out = wide[..., :width]
    return out.transpose(0, 1).contiguous().to(device)
