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

import errno
import fcntl
import logging
import math
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_kd.checkpoint.refs import file_checksum
from megatron_kd.config.schema import KDConfig, RunConfig
from megatron_kd.data.identity import data_identity, describe_difference
from megatron_kd.data.tokenizer import file_sha256
from megatron_kd.distill.cache_encoding import Encoding, ShardTooLarge, stored_bytes
from megatron_kd.distill.cache_layout import (  # noqa: F401 (re-exported)
    COMPLETE,
    MANIFEST,
    SHARD_INDEX,
    complete_shards,
    first_gap,
    shard_dir,
)
from megatron_kd.distill.cache_window import check_reader, deleted_below, refuse_deleted
from megatron_kd.distill.vocab_parallel import Shard, all_reduce
from megatron_kd.errors import ConfigError
from megatron_kd.jsonio import read_json

log = logging.getLogger("megatron_kd")
OPEN_SHARDS = 4  # memory-mapped shards a reader keeps open (each holds a file and a mapping per field)
PADDING_LOGIT = -1.0e4  # teacher logits of padding columns: never counted by the KD loss
TOPK_FIELDS = ("ids", "logp", "other_logp", "label_logp", "entropy")  # the rows' fields, decoded
FULL_FIELDS = ("logp", "label_logp", "entropy")


# --- streaming: a cache that is still being written ------------------------------------------

WRITER_LOCK = ".mkd.lock"  # held by the `mkd teacher-cache` job writing the directory (run_dir.lock_run_dir)


def writer_state(root: Path) -> str:
    """Whether a cache job holds the directory's lock now, in words for an error line."""
    lock = Path(root) / WRITER_LOCK
    if not lock.is_file():
        return "no cache job has started on it"
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            return (f"its cache job (pid {holder}) is still running: raise teacher.cache_wait_s (e.g. "
                    "teacher.cache_wait_s=3600) and start the run again; it resumes from its last checkpoint")
        raise
    finally:
        os.close(fd)
    return "no cache job is running on it (it died or finished early): run `mkd teacher-cache` again"


def wait_for(path: Path, wait_s: float, poll_s: float = 0.5) -> bool:
    """True once `path` exists, waiting up to `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    if not path.exists() and wait_s > 0:
        msg = f"waiting up to {wait_s:g}s for {path} (teacher.cache_wait_s): its cache job is writing it"
        if log.hasHandlers():
            log.info(msg)
        else:  # before the run's logging is set up (the launch checks): still one line people see
            print(msg, file=sys.stderr, flush=True)
    while not path.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
    return True


# --- the fingerprint: what a cache was made from ------------------------------------------

def fingerprint(cfg: RunConfig, top_k: int | None, teacher_ckpt: Path | None, teacher_state: dict | None,
                dtype: str = "fp32", sampled: bool = False) -> dict:
    """The inputs that decide a cache's bytes (a run reading it must agree on all of them)."""
    d = cfg.data
    data = {"mock": d.mock}
    if not d.mock:
        data.update(tokenizer_sha256=file_sha256(Path(d.tokenizer)),
                    train=[{"prefix": prefix, "content": content}
                           for prefix, content in data_identity(d.train).items()],
                    train_weights=d.train_weights, split=d.split)
    out = {"data": data, "seq_length": cfg.train.seq_length,
           "data_seed": d.seed if d.seed is not None else cfg.run.seed,
           "vocab_size": cfg.model.vocab_size, "top_k": "all" if top_k is None else int(top_k), "dtype": dtype}
    if sampled:  # top_k is then the draws per token (the slots of a row)
        out["sampled"] = True
    if teacher_ckpt is not None:
        out["teacher"] = {"checkpoint": str(Path(teacher_ckpt).resolve()), "step": teacher_state.get("step"),
                          "state_crc": teacher_state.get("state_crc"),
                          "dtype": cfg.teacher.dtype or cfg.precision.dtype,
                          "fp8": cfg.teacher.fp8 or cfg.precision.fp8}
    return out


def differing_fields(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differing_fields(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def read_manifest(root: Path) -> dict:
    """The manifest of a cache, its fields of the right types and consistent with each other (a
    hand-edited count is one line, not a wrong row read later)."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise ConfigError(f"teacher cache {root} has no {MANIFEST}; write it with `mkd teacher-cache`")
    where = root / MANIFEST
    m = read_json(where, dict, "teacher cache manifest")
    for key in ("fingerprint", "num_samples", "shard_rows", "num_shards", "seq_length"):
        if key not in m:
            raise ConfigError(f"teacher cache manifest {where} has no '{key}'; write the cache again")
    for key in ("num_samples", "shard_rows", "num_shards", "seq_length"):
        if not isinstance(m[key], int) or isinstance(m[key], bool) or m[key] < 1:
            raise ConfigError(f"teacher cache manifest {where} has '{key}': {str(m[key])[:40]}, not an "
                              "integer >= 1; write the cache again")
    fp = m["fingerprint"]
    top_k, vocab = (fp.get("top_k"), fp.get("vocab_size")) if isinstance(fp, dict) else (None, None)
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1 or not (
            top_k == "all" or (isinstance(top_k, int) and not isinstance(top_k, bool) and 1 <= top_k <= vocab)):
        raise ConfigError(f"teacher cache manifest {where} has no valid fingerprint (vocab_size, top_k); "
                          "write the cache again")
    if m["num_shards"] != -(-m["num_samples"] // m["shard_rows"]):
        raise ConfigError(f"teacher cache manifest {where} is inconsistent: {m['num_samples']} samples in "
                          f"shards of {m['shard_rows']} rows are not {m['num_shards']} shards (edited?); "
                          "write the cache again")
    Encoding.from_manifest(m, where)  # an encoding this version cannot read is one line here
    return m


def check_shard(root: Path, m: dict, j: int) -> None:
    """Shard `j` is what the job wrote: each file's CRC-32 as its index records, the shapes the
    manifest implies, and (top-K caches) every id inside the vocabulary. Read once per shard,
    streaming (the CRC reads the file in 16 MiB pieces; the id check is one pass over the map)."""
    d = shard_dir(root, j)
    if not (d / SHARD_INDEX).is_file():
        raise ConfigError(f"teacher cache {root}: shard {d.name} is missing or incomplete; run "
                          "`mkd teacher-cache` again to finish it")
    index = read_json(d / SHARD_INDEX, dict, "teacher cache shard index")
    top_k, vocab = m["fingerprint"]["top_k"], m["fingerprint"]["vocab_size"]
    enc = Encoding.from_manifest(m, Path(root) / MANIFEST)
    width = vocab if top_k == "all" else top_k
    rows = min(m["shard_rows"], m["num_samples"] - j * m["shard_rows"])
    fix = "delete that shard directory and run `mkd teacher-cache` again (it writes what is missing)"
    arrays = {}
    for name, dtype in enc.files(top_k).items():
        f = d / enc.file_name(name)
        info = index.get(f.name)
        if not f.is_file() or not isinstance(info, dict) or info.get("crc32") != file_checksum(f):
            raise ConfigError(f"teacher cache {root}: {d.name}/{f.name} is missing or does not match its "
                              f"checksum (changed after it was written); {fix}")
        want = enc.shape(name, rows, m["seq_length"], width)
        arr = _load_bounded(root, enc, f, stored_bytes(want, dtype), fix)
        if arr.shape != want or arr.dtype != dtype:
            raise ConfigError(f"teacher cache {root}: {d.name}/{f.name} holds {arr.dtype} {arr.shape}, the "
                              f"manifest says {dtype} {want} ({enc.describe()}); {fix}")
        arrays[name] = arr
    if "ids" in arrays and arrays["ids"].size:
        ids = enc.decode({k: v for k, v in arrays.items() if k.startswith("ids")})["ids"]
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab:
            raise ConfigError(f"teacher cache {root}: {d.name}/ids holds token ids outside [0, {vocab}) "
                              f"(from {low} to {high}); {fix}")


def _load_bounded(root: Path, enc: Encoding, f: Path, limit: int, fix: str) -> np.ndarray:
    """A shard file, decompressed no further than `limit` bytes (its recorded shape's size)."""
    try:
        return enc.load(f, max_bytes=limit)
    except ShardTooLarge as exc:
        raise ConfigError(f"teacher cache {root}: shard {f.parent.name}/{f.name} decompresses past its recorded "
                          f"size {exc.limit} bytes; the cache is damaged, rebuild it (delete that shard directory "
                          "and run `mkd teacher-cache` again)") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"teacher cache {root}: {f.parent.name}/{f.name} is not a NumPy array ({exc}); "
                          f"{fix}") from exc


def check_kd(kd: KDConfig, top_k, sampled: bool = False) -> str | None:
    """Why these KD options cannot be computed exactly (or, from a sampled cache, without bias)
    from a cache of `top_k` (None: they can)."""
    if top_k == "all":
        return None
    if sampled:
        temps = {kd.temperature, kd.temperature_schedule.final if kd.temperature_schedule.final is not None
                 else kd.temperature}
        if kd.kind != "forward_kl" or kd.fused_output_layer or kd.mix == "magnitude_matched":
            return ("a sampled cache serves forward KL (kd.kind=forward_kl, a convex/keep_ce/keep_kd mix, "
                    "kd.fused_output_layer=false) only; write a --top-k all cache for the rest")
        if kd.top_k is not None or kd.top_p is not None or kd.other_bucket or temps != {1.0}:
            return ("a sampled cache estimates the teacher's whole distribution at temperature 1: set "
                    "kd.top_k=null, kd.top_p=null, kd.other_bucket=false and keep kd.temperature at 1")
        return None
    if kd.fused_output_layer:
        return "kd.fused_output_layer makes the teacher's logits from its hidden states; set it to false"
    if kd.kind == "hard":
        return None
    temps = {kd.temperature, kd.temperature_schedule.final if kd.temperature_schedule.final is not None
             else kd.temperature}
    if kd.kind != "forward_kl":
        return f"kd.kind={kd.kind} needs the teacher's whole distribution; write the cache with --top-k all"
    if kd.top_p is not None:
        return "kd.top_p needs the teacher's whole distribution; use kd.top_k or a --top-k all cache"
    if kd.top_k is None or kd.top_k > top_k:
        return (f"a top-{top_k} cache gives forward KL exactly only with kd.top_k <= {top_k} (and "
                "optionally kd.other_bucket=true); set kd.top_k, or write the cache with --top-k all")
    if temps != {1.0}:
        return (f"a top-{top_k} cache holds the teacher at temperature 1; kd.temperature (and its "
                "schedule) must stay 1, or write the cache with --top-k all")
    return None


def check_run(cfg: RunConfig, need_samples: int, teacher_ckpt: Path | None, teacher_state: dict | None) -> dict:
    """Before any process starts: the cache in teacher.cache fits this run. Returns the manifest."""
    root = Path(cfg.teacher.cache)
    wait = cfg.teacher.cache_wait_s
    if wait > 0 and not wait_for(root / MANIFEST, wait):
        raise ConfigError(f"teacher cache {root} has no manifest after teacher.cache_wait_s={wait:g}s; "
                          f"{writer_state(root)}")
    m = read_manifest(root)
    streaming = wait > 0 and not (root / COMPLETE).is_file()  # the shards are waited for as they are read
    if not streaming and not (root / COMPLETE).is_file():
        raise ConfigError(f"teacher cache {root} is not complete (the cache job did not finish); run "
                          "`mkd teacher-cache` again: it continues where it stopped, or set "
                          "teacher.cache_wait_s=SECONDS to train beside it while it writes")
    top_k = m["fingerprint"].get("top_k")
    # any value encoding serves any run (the reader decodes it)
    sampled = bool(m["fingerprint"].get("sampled"))
    mine = fingerprint(cfg, None if top_k == "all" else top_k, teacher_ckpt, teacher_state,
                       dtype=m["fingerprint"].get("dtype", "fp32"), sampled=sampled)
    if teacher_ckpt is None:
        mine["teacher"] = m["fingerprint"].get("teacher")
    check_same_data(root, m["fingerprint"], mine)
    diff = differing_fields(m["fingerprint"], mine)
    if diff:
        raise ConfigError(f"teacher cache {root} was made for another run: {', '.join(diff)} differ; write a "
                          "cache for this recipe (`mkd teacher-cache RECIPE ... --out DIR`)")
    if m.get("window"):  # a windowed cache: this run's checkpoints must come often enough
        check_reader(root, m["window"], m["shard_rows"], cfg.train.global_batch_size, cfg.checkpoint.save_interval)
    _check_shards_present(root, m, streaming)
    if need_samples > m["num_samples"]:
        raise ConfigError(f"teacher cache {root} covers {m['num_samples']} samples but this run trains on "
                          f"{need_samples}; write it for the longer run (train.steps/train.tokens)")
    why = check_kd(cfg.kd, top_k, sampled)
    if why:
        raise ConfigError(f"teacher cache {root}: {why}")
    return m


def check_same_data(root: Path, cached: dict, mine: dict) -> None:
    """The cache was made from this run's data, by content (data/identity.py): the same documents
    tokenized again in another order have the same paths and sizes but other rows. A cache that
    recorded only sizes (before content identities) cannot be told from such data: refused."""
    want = (mine.get("data") or {}).get("train")
    have = (cached.get("data") or {}).get("train")
    if want is None:  # mock data: its fingerprint says so, differing_fields compares it
        return
    if not isinstance(have, list) or not all(isinstance(e, dict) and "content" in e for e in have):
        raise ConfigError(f"teacher cache {root} records its data by size only (it was written before caches "
                          "recorded their data's content), so re-tokenized data cannot be told from it; rebuild "
                          "the cache (`mkd teacher-cache RECIPE ... --out NEW_DIR`)")
    have_ids = {str(e.get("prefix")): e.get("content") for e in have}
    want_ids = {e["prefix"]: e["content"] for e in want}
    if have_ids != want_ids:
        raise ConfigError(f"teacher cache {root} was made from other data: {describe_difference(have_ids, want_ids)} "
                          "(re-tokenized or replaced since); rebuild the cache for this data (`mkd teacher-cache "
                          "RECIPE ... --out NEW_DIR`)")


def _check_shards_present(root: Path, m: dict, streaming: bool) -> None:
    """Every shard the window has not deleted is there and whole (sizes; `--verify` reads the
    checksums); while streaming, the ones written so far. The manifest's counts are checked
    against the shard directories that exist, never looped over."""
    gone = deleted_below(root, m["num_shards"])
    present = complete_shards(root, m["num_shards"])
    damaged = []
    for j in present:
        if j < gone:
            continue
        index = read_json(shard_dir(root, j) / SHARD_INDEX, dict, "teacher cache shard index")
        for name, info in index.items():
            f = shard_dir(root, j) / name
            if not f.is_file() or not isinstance(info, dict) or f.stat().st_size != info.get("bytes"):
                damaged.append(j)
                break
    whole = sum(1 for j in present if j >= gone) - len(damaged)
    if damaged or (not streaming and whole < m["num_shards"] - gone):
        first = damaged[0] if damaged else first_gap(present, gone)
        raise ConfigError(f"teacher cache {root}: shard {shard_dir(root, first).name} is missing or truncated "
                          f"({m['num_shards'] - gone - whole} of {m['num_shards']}); delete the damaged shard "
                          "directories and run `mkd teacher-cache` again (it writes what is missing)")


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
    local = (lab >= shard.start) & (lab < shard.start + width)
    pos = (lab - shard.start).clamp(0, width - 1)
    label_z = all_reduce(torch.where(local, z.gather(1, pos.unsqueeze(1)).squeeze(1), torch.zeros_like(m_all)),
                          dist.ReduceOp.SUM, group)
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
            self._maps[j] = {f: _load_bounded(self.root, self.encoding, d / self.encoding.file_name(f),
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
