"""Whether a teacher cache may be read, and by which run: what it was made from (its
fingerprint: data by content, sequence length, data seed, vocabulary, K, teacher), its manifest's
fields against each other, each shard's files against their checksums and shapes (decompressed
no further than those shapes), its shards against the directories that exist, and the KD
options it can serve exactly. Read before a run starts (`check_run`) and by the reader
(distill/cache.py) the first time it maps a shard; streamed caches are waited for here."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from megatron_kd.checkpoint.refs import file_checksum, without_location
from megatron_kd.config.schema import KDConfig, RunConfig
from megatron_kd.data.identity import data_identity, stream_difference
from megatron_kd.data.tokenizer import file_sha256
from megatron_kd.distill.cache_encoding import Encoding, ShardTooLarge, stored_bytes
from megatron_kd.distill.cache_layout import COMPLETE, MANIFEST, SHARD_INDEX, complete_shards, first_gap, shard_dir
from megatron_kd.distill.cache_window import MAX_WINDOW, WINDOW_FILE, check_reader, deleted_below
from megatron_kd.errors import ConfigError
from megatron_kd.jsonio import read_json

log = logging.getLogger("megatron_kd")


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
    """True once `path` exists, waiting up to `wait_s` seconds (finite: a NaN deadline is never
    reached, so it would wait forever)."""
    if not (isinstance(wait_s, (int, float)) and math.isfinite(wait_s) and wait_s >= 0):
        raise ConfigError(f"teacher.cache_wait_s must be a finite number of seconds >= 0, got {wait_s}; "
                          "e.g. teacher.cache_wait_s=600")
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


def fingerprint_difference(have: dict, want: dict) -> list[str]:
    """The fields two cache fingerprints differ in, wherever their inputs lie (check_same_data
    compares the training data themselves)."""
    return differing_fields(_comparable(have), _comparable(want))


def _comparable(fp: dict) -> dict:
    """A fingerprint without where its inputs lie (check_same_data compares the training data by
    content): a moved or copied project reads the caches it made."""
    out = dict(fp, teacher=without_location(fp.get("teacher")))
    if isinstance((fp.get("data") or {}).get("train"), list):
        out["data"] = {k: v for k, v in fp["data"].items() if k != "train"}
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
    check_window_keys(root, m)
    return m


def check_window_keys(root: Path, m: dict, need: bool = False) -> None:
    """A windowed cache's `window` and `readers` (both, or neither: plan_cache writes them together):
    whole numbers in range, before any arithmetic on them ("abc" - 2 was a traceback at train
    time). `need` (--verify): a window.json (written only by a windowed job) makes them required."""
    where = Path(root) / MANIFEST
    state = (Path(root) / WINDOW_FILE).is_file()
    if not ("window" in m or "readers" in m or (need and state)):
        return
    if state:  # a damaged window.json is named as such first
        deleted_below(root, m["num_shards"])
    for key, low in (("window", 2), ("readers", 1)):
        v = m.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= MAX_WINDOW:
            said = "no '" + key + "'" if key not in m else f"'{key}': {json.dumps(v)[:40]}"
            raise ConfigError(f"teacher cache manifest {where} has {said}, not an integer in {low}..{MAX_WINDOW} "
                              f"(a windowed cache{' with a ' + WINDOW_FILE if state else ''}); "
                              "the cache is damaged, rebuild it (`mkd teacher-cache ... --out NEW_DIR`)")


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
        arr = load_bounded(root, enc, f, stored_bytes(want, dtype), fix)
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


def load_bounded(root: Path, enc: Encoding, f: Path, limit: int, fix: str) -> np.ndarray:
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
    diff = fingerprint_difference(m["fingerprint"], mine)
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
    what = stream_difference([(str(e.get("prefix")), e.get("content")) for e in have],
                             [(e["prefix"], e["content"]) for e in want])
    if what is not None:
        raise ConfigError(f"teacher cache {root} was made from other data: {what}; rebuild the cache for this "
                          "data (`mkd teacher-cache RECIPE ... --out NEW_DIR`)")


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
