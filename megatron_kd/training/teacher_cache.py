"""`mkd teacher-cache`: run the frozen teacher once over exactly the samples a KD recipe's
student trains on and write the rows of distill/cache.py, in shards keyed by global sample index.

The job is the teacher's own run: `parallel.*` and the launcher give the teacher any TP/PP/DP.
Shard j goes to data-parallel rank j % DP; each is written to SHARD.partial and renamed when
complete, with a CRC-32 per file, so a killed job restarts where it stopped and ends with the
same bytes. The manifest (fingerprint, shard layout) is written first and checked on restart.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch

from megatron_kd.checkpoint.refs import file_checksum
from megatron_kd.config import padded_vocab
from megatron_kd.config.schema import RunConfig
from megatron_kd.config.validate import train_steps
from megatron_kd.console import Every, hms
from megatron_kd.data.datasets import build_datasets, load_tokenizer
from megatron_kd.distill.cache import (
    COMPLETE,
    MANIFEST,
    SHARD_INDEX,
    check_same_data,
    check_shard,
    check_window_keys,
    complete_shards,
    fingerprint,
    fingerprint_difference,
    first_gap,
    read_manifest,
    shard_dir,
    teacher_rows,
)
from megatron_kd.distill.cache_encoding import FORMAT, Encoding
from megatron_kd.distill.cache_window import Window, deleted_below
from megatron_kd.distill.model import build_teacher, sequence_major_logits
from megatron_kd.distill.teacher import resolve_teacher
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.training.faults import Faults
from megatron_kd.training.run_dir import LOCK_FILE

log = logging.getLogger("megatron_kd.cache")
NEARLY_FULL = 1 << 20  # free bytes below which a failed write is taken for a full disk
SHARD_BYTES = 64 << 20  # about this much per shard (a few thousand rows of a top-64 cache at 4k tokens)


def plan_cache(cfg: RunConfig, top_k: int | None, shard_rows: int | None = None,
               encoding: Encoding | None = None, sampled: bool = False, window: int | None = None,
               readers: int = 1) -> dict:
    """The manifest a cache for this recipe has (before anything is written or run). `sampled`:
    `top_k` is the draws per token of a sampled cache (distill/cache.py); `window`: at most that
    many shards on disk, for `readers` student runs (distill/cache_window.py)."""
    ckpt, teacher, state = resolve_teacher(cfg, check=False)
    encoding = encoding or Encoding.for_vocab(cfg.model.vocab_size)
    n = train_steps(cfg) * cfg.train.global_batch_size
    per_token = encoding.bytes_per_token(cfg.model.vocab_size, "all" if top_k is None else top_k)
    rows = shard_rows or max(1, min(n, int(SHARD_BYTES // (per_token * cfg.train.seq_length))))
    padded = teacher.padded_vocab_size or padded_vocab(cfg.model, cfg.parallel.tp)
    return {"fingerprint": fingerprint(cfg, top_k, ckpt, state, dtype=encoding.values, sampled=sampled),
            "num_samples": n,
            "shard_rows": rows, "teacher_padded_vocab": padded,
            "num_shards": math.ceil(n / rows), "seq_length": cfg.train.seq_length,
            "bytes_per_token": per_token, "format": FORMAT, "encoding": encoding.to_manifest()} | (
                {"window": window, "readers": readers} if window else {})


def check_out(out: Path, planned: dict) -> None:
    """`out` is new, empty, or a cache of the same fingerprint (then the job continues it)."""
    if not out.exists() or (out.is_dir() and not any(p.name != LOCK_FILE for p in out.iterdir())):
        return
    if not (out / MANIFEST).is_file():
        raise ConfigError(f"--out {out} exists and is not a teacher cache; choose a new directory")
    have = read_manifest(out)
    check_same_data(out, have["fingerprint"], planned["fingerprint"])  # re-tokenized data: named as such
    diff = fingerprint_difference(have["fingerprint"], planned["fingerprint"])  # wherever the project lies now
    diff += [k for k in ("num_samples", "shard_rows", "encoding", "window", "readers") if have.get(k) != planned.get(k)]
    if diff:
        raise ConfigError(f"--out {out} holds a teacher cache of another run ({', '.join(diff)} differ); "
                          "choose a new directory")


def _prepare_out(out: Path, planned: dict, rank: int) -> None:
    """Collective: the manifest written once, a killed job's partial shards removed."""
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / MANIFEST).is_file():
            write_text_atomic(out / MANIFEST, json.dumps(planned, indent=2))
        for p in out.glob("*.partial"):  # left by a killed job
            shutil.rmtree(p, ignore_errors=True)
    torch.distributed.barrier()


def _finish_cache(out: Path, planned: dict, rank: int) -> None:
    """Collective: every shard on disk (checked by rank 0 for all), then the cache marked complete."""
    torch.distributed.barrier()
    left = [_missing_shards(out, planned["num_shards"]) if rank == 0 else None]
    torch.distributed.broadcast_object_list(left, src=0)
    if left[0]:  # every rank raises (none waits at a barrier for one that left)
        raise ConfigError(f"teacher cache {out}: shards {left[0][:5]} were not written; run the job again")
    if rank == 0:
        shutil.rmtree(out / "data_cache", ignore_errors=True)  # megatron-core's index files: the job's own
        write_text_atomic(out / COMPLETE, f"{planned['num_samples']} samples, {planned['num_shards']} shards\n")
    torch.distributed.barrier()


def write_teacher_cache(cfg: RunConfig, out: Path, top_k: int | None, planned: dict,
                        reader_wait_s: float = 3600.0) -> dict:
    """Collective: every rank of the teacher's launch. Returns {shards, written, samples,
    max_on_disk (a windowed cache: the most shards it held at once)}."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    rank = torch.distributed.get_rank()
    encoding = Encoding.from_manifest(planned, "the planned manifest")
    _prepare_out(out, planned, rank)
    shard_written = Faults.from_env().cache_shard_hook()  # None unless a restart test asks
    ckpt, teacher_model, _ = resolve_teacher(cfg, check=False)
    teacher = build_teacher(cfg, teacher_model, ckpt)  # one chunk per virtual pipeline stage
    for chunk in teacher:
        chunk.eval()
    tokenizer = load_tokenizer(cfg)
    n = planned["num_samples"]
    dataset = _build_dataset(cfg, tokenizer, n, out)
    # an MoE teacher split over expert-parallel ranks exchanges tokens in every forward: each
    # data-parallel rank then runs the same passes of the same length (a rank with no shard left
    # repeats one, unwritten)
    lockstep = teacher_model.moe.num_experts > 0 and cfg.parallel.ep > 1
    missing, todo = _shards_to_write(out, planned, rank, lockstep)
    writer = parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
    group = parallel_state.get_tensor_model_parallel_group()
    micro = cfg.train.micro_batch_size
    seq = cfg.train.seq_length
    sampled = bool(planned["fingerprint"].get("sampled"))
    window = Window(out, planned["window"], planned["readers"], reader_wait_s, deletes=True,
                    num_shards=planned["num_shards"]) if planned.get("window") else None
    ticker = CacheProgress(sum(_micro_batches(planned, j, micro, len(teacher), cfg.parallel.pp) for j, _ in todo),
                           planned["num_shards"], len(teacher))
    for j, write in todo:
        if window is not None and write:  # at most `window` shards past the readers' oldest checkpoint
            window.wait_to_write(j)
        first = j * planned["shard_rows"]
        samples = list(range(first, min(first + planned["shard_rows"], n)))
        # whole micro-batches; with virtual stages a multiple of PP of them (the schedule's groups)
        group_rows = micro * (cfg.parallel.pp if len(teacher) > 1 else 1)
        rows = planned["shard_rows"] if lockstep else len(samples)  # in lockstep every pass is a full shard's
        padded = samples + [samples[-1]] * (rows - len(samples) + (-rows % group_rows))
        collected: list[dict] = []

        def forward_step(data_iterator, model):  # (megatron-core may pass a third argument: no defaults)
            ticker.step(j)  # called within this shard's pass
            batch = next(data_iterator)
            logits = model(batch["tokens"], batch["position_ids"], None, output_processor=sequence_major_logits)

            def loss_func(output):
                generator = None
                if sampled:  # the draws depend on the data seed and the samples only: a restart redraws them
                    first = padded[len(collected) * micro]
                    generator = torch.Generator().manual_seed(
                        planned["fingerprint"]["data_seed"] * 1_000_003 + first)
                collected.append(teacher_rows(output, batch["labels"].t(), cfg.model.vocab_size, top_k, group,
                                              generator))
                return output.new_zeros(()), torch.tensor(1, dtype=torch.int), {}

            return logits, loss_func

        micro_batches = [_batch(dataset, padded[i:i + micro]) for i in range(0, len(padded), micro)]
        batches = [iter(micro_batches) for _ in teacher]  # each chunk reads the same ones
        with torch.no_grad():
            get_forward_backward_func()(forward_step_func=forward_step,
                                        data_iterator=batches[0] if len(teacher) == 1 else batches, model=teacher,
                                        num_microbatches=len(padded) // micro, seq_length=seq,
                                        micro_batch_size=micro, forward_only=True)
        if writer and write:
            rows = {k: torch.cat([c[k] for c in collected])[:len(samples)] for k in collected[0]}
            _write_shard(out, j, rows, encoding)
            if shard_written is not None:
                shard_written(j)
            log.info("teacher cache shard %d/%d: samples %d-%d%s", j + 1, planned["num_shards"], samples[0],
                     samples[-1], f" ({window.on_disk()} shards on disk)" if window is not None else "")
    _finish_cache(out, planned, rank)
    # every shard that was missing has been written, by some rank (the last pipeline stage's)
    return {"shards": planned["num_shards"], "written": len(missing), "samples": n,
            "max_on_disk": window.max_on_disk if window is not None else None}


def _shards_to_write(out: Path, planned: dict, rank: int, lockstep: bool) -> tuple[list, list[tuple[int, bool]]]:
    """(the missing shards, this rank's passes). Rank 0 decides which shards are missing and tells
    everyone: the ranks of one pipeline must agree (a file system's attribute cache could let each
    rank see a different state); a windowed cache's deleted shards are not missing (every reader
    had passed them)."""
    from megatron.core import parallel_state

    missing = [_missing_shards(out, planned["num_shards"]) if rank == 0 else None]
    torch.distributed.broadcast_object_list(missing, src=0)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    return missing[0], _passes(missing[0], dp, dp_rank, lockstep)


def _passes(missing: list, dp: int, dp_rank: int, lockstep: bool) -> list[tuple[int, bool]]:
    """This data-parallel rank's shard passes, (shard, write it): its share of the missing shards,
    and in lockstep as many passes as the busiest rank (a repeat of a missing shard, not written)."""
    mine = [(j, True) for j in missing if j % dp == dp_rank]
    if lockstep and missing:
        busiest = max(sum(1 for j in missing if j % dp == r) for r in range(dp))
        mine += [(missing[0], False)] * (busiest - len(mine))
    return mine


def _micro_batches(planned: dict, j: int, micro: int, chunks: int, pp: int) -> int:
    """Shard j's micro-batches, as write_teacher_cache pads them (whole groups of micro-batches)."""
    first = j * planned["shard_rows"]
    rows = min(planned["shard_rows"], planned["num_samples"] - first)
    group_rows = micro * (pp if chunks > 1 else 1)
    return -(-rows // group_rows) * group_rows // micro


class CacheProgress:
    """`teacher cache: micro-batch 40/384 (shard 1/3) | ETA 0:01:00` every PROGRESS_EVERY_S at
    most (a shard can take minutes, and its own line comes once it is written), over the shards
    this rank runs; a local sweep reads these lines from the job's log. Counted where the
    teacher's forward step starts, which with virtual pipeline stages runs once per chunk."""

    def __init__(self, micro_batches: int, num_shards: int, chunks: int = 1, every: Every | None = None):
        self.total, self.num_shards, self.chunks = micro_batches, num_shards, max(1, chunks)
        self.every = every or Every()
        self.calls = 0

    def step(self, shard: int) -> None:
        self.calls += 1
        if self.every.due():
            log.info("%s", self.line(shard))

    def line(self, shard: int) -> str:
        done = self.calls // self.chunks
        left = self.every.elapsed() / max(1, done) * max(0, self.total - done)
        return (f"teacher cache: micro-batch {done}/{self.total} (shard {shard + 1}/{self.num_shards}) "
                f"| ETA {hms(left)}")


def _build_dataset(cfg: RunConfig, tokenizer, n: int, out: Path):
    """The samples the student trains on. megatron-core writes their index under OUT/data_cache and
    wraps a failed write in a bare Exception (its advice: "supply a directory to which you have
    write access"); a full disk there is said as such (exit 4), and its partial index removed."""
    try:
        return build_datasets(cfg, tokenizer, n)[0]
    except Exception as exc:
        cause, seen = exc, 0
        while cause is not None and not isinstance(cause, OSError) and seen < 16:
            cause, seen = cause.__cause__, seen + 1
        index_dir = out / "data_cache"
        # numpy's short write carries no errno: a full disk if nearly nothing is left there
        if not isinstance(cause, OSError) or not (cause.errno == errno.ENOSPC
                                                  or (cause.errno is None and _nearly_full(out))):
            raise
        shutil.rmtree(index_dir, ignore_errors=True)  # the job's own index files: rebuilt next time
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (the disk is full: writing megatron-core's "
                      "data index for the cache job)", str(index_dir)) from exc


def _batch(dataset, index: list[int]) -> dict:
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    samples = [dataset[i] for i in index]
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]).to(device)
            for k in ("tokens", "labels", "position_ids")}


def _missing_shards(out: Path, num_shards: int) -> list[int]:
    """The shards not written yet (a windowed cache's deleted shards are not missing)."""
    present = set(complete_shards(out, num_shards))
    return [j for j in range(deleted_below(out, num_shards), num_shards) if j not in present]


def _write_shard(out: Path, j: int, rows: dict[str, torch.Tensor], encoding: Encoding) -> None:
    """Shard j, written into SHARD.partial and renamed when whole. A write that fails (a full
    disk) removes the partial shard, so it does not keep filling the disk, and names the file."""
    final = shard_dir(out, j)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    f = partial
    try:
        partial.mkdir()
        files = {}
        for name, array in encoding.encode(rows).items():
            f = partial / encoding.file_name(name)
            encoding.save(f, array)
            files[f.name] = {"bytes": f.stat().st_size, "crc32": file_checksum(f)}
        f = partial / SHARD_INDEX
        f.write_text(json.dumps(files, indent=1))  # last: marks the shard whole
        partial.rename(final)
    except OSError as exc:
        # numpy's short write says only "N requested and M written" (no errno): a full disk if
        # nearly nothing is left there (looked at before the partial shard gives its space back)
        full = exc.errno == errno.ENOSPC or (exc.errno is None and _nearly_full(partial))
        shutil.rmtree(partial, ignore_errors=True)
        if full or exc.filename is None:  # numpy's and zstd's writes name no file
            raise OSError(errno.ENOSPC if full else exc.errno, os.strerror(errno.ENOSPC) if full
                          else exc.strerror or str(exc), str(f)) from exc
        raise


def _nearly_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path).free < NEARLY_FULL
    except OSError:
        return False


def verify_cache(root: Path) -> str:
    """Every shard present, of the manifest's shapes, with its files' checksums; one line back."""
    m = read_manifest(root)
    check_window_keys(root, m, need=True)  # shards deleted by a window the manifest does not record
    top_k = m["fingerprint"]["top_k"]
    gone = deleted_below(root, m["num_shards"])
    present = [j for j in complete_shards(root, m["num_shards"]) if j >= gone]
    if len(present) < m["num_shards"] - gone:  # counted before any loop over the manifest's claim
        missing = first_gap(present, gone)
        raise ConfigError(f"teacher cache {root}: shard {shard_dir(root, missing).name} is missing or incomplete "
                          f"({m['num_shards'] - gone - len(present)} of {m['num_shards']}); run `mkd teacher-cache` "
                          "again to finish it")
    for j in present:
        check_shard(root, m, j)
    if not (Path(root) / COMPLETE).is_file():
        raise ConfigError(f"teacher cache {root} is not marked complete; run `mkd teacher-cache` again")
    return (f"teacher cache {root}: {m['num_shards']} shards, {m['num_samples']} samples of "
            f"{m['seq_length']} tokens, top-k {top_k}, {Encoding.from_manifest(m, root).describe()}: all verified"
            + (f" ({gone} shards deleted by its window of {m['window']})" if gone else ""))
