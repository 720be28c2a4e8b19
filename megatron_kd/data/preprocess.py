"""Raw corpus -> megatron-core IndexedDataset (.bin/.idx), tokenized by several workers.

Inputs are what `data/sources.py` reads (JSONL/text, gzip/zstd, Parquet, Arrow/`datasets`
directories). The output is what Megatron-LM's tools/preprocess_data.py writes for the same
records with `--append-eod` (tested byte for byte): each record's token ids, then the tokenizer's
end-of-document id, as one document through megatron-core's IndexedDatasetBuilder; a record of
pre-split sentences is one document with one sequence per sentence; an empty text is an empty
document (no EOD), as there. Next to `PREFIX.bin/.idx` a `PREFIX.meta.json` records the tokenizer
(sha256) and the counts, so a run can refuse data tokenized by another tokenizer.

Streaming: at most `4 x workers` batches are in flight, so memory is bounded by the worker
batches, not the corpus; the output keeps the input order. Atomic: everything is written under
`.partial` names and moved into place when the whole job has succeeded (index last); a killed or
failed job leaves no `.bin/.idx` that looks complete. With `shard_tokens`, a new output prefix
(`PREFIX_00000`, `PREFIX_00001`, ...) starts once a prefix holds that many tokens, and
`PREFIX.blend.yaml` lists them with their token counts as blend weights (a recipe fragment).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import re
import signal
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from megatron_kd.console import hms
from megatron_kd.data.sources import iter_records, open_sources
from megatron_kd.data.tokenizer import Tokenizer
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic

_WORKER_TOKENIZER: Tokenizer | None = None
IN_FLIGHT_PER_WORKER = 4


@dataclass
class PreprocessSummary:
    output_prefix: str
    documents: int
    tokens: int
    seconds: float
    tokens_per_second: float
    tokenizer_sha256: str
    dtype: str
    prefixes: list[str] = field(default_factory=list)  # the outputs (several with shard_tokens)
    prefix_tokens: list[int] = field(default_factory=list)


def _init_worker(tokenizer_path: str, eod_token: str | None) -> None:
    global _WORKER_TOKENIZER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (one line)
    _WORKER_TOKENIZER = Tokenizer(tokenizer_path, eod_token)


def encode_record(tok: Tokenizer, record: str | list[str]) -> tuple[np.ndarray, list[int]]:
    """One record -> (token ids, sequence lengths), exactly as Megatron-LM's Encoder.encode with
    --append-eod: empty sentences dropped, EOD added to the last sentence of a non-empty record."""
    ids: list[int] = []
    lens: list[int] = []
    for sentence in ([record] if isinstance(record, str) else record):
        s = tok.encode(sentence)
        if s:
            ids.extend(s)
            lens.append(len(s))
    if ids:
        ids.append(tok.eod)
        lens[-1] += 1
    return np.asarray(ids, dtype=np.int64), lens


def _encode_batch(records: list) -> list[tuple[np.ndarray, list[int]]]:
    return [encode_record(_WORKER_TOKENIZER, r) for r in records]


def read_meta(prefix: str | Path) -> dict | None:
    path = Path(f"{prefix}.meta.json")
    return json.loads(path.read_text()) if path.is_file() else None


def output_files(prefix: Path, shard_tokens: int | None) -> list[Path]:
    """The files a job may replace: PREFIX.{bin,idx,meta.json} or its shards and blend file."""
    if shard_tokens is None:
        return [Path(f"{prefix}{s}") for s in (".bin", ".idx", ".meta.json")]
    return _shard_files(prefix) + [Path(f"{prefix}.blend.yaml")]


def _shard_files(prefix: Path) -> list[Path]:
    """PREFIX_NNNNN.{bin,idx,meta.json} on disk (a killed job's .partial files are not outputs)."""
    return sorted(p for p in prefix.parent.glob(f"{prefix.name}_[0-9][0-9][0-9][0-9][0-9].*")
                  if ".partial" not in p.name)


class _Writer:
    """The output prefix(es), all under `.partial` names until `commit`."""

    def __init__(self, prefix: Path, dtype, shard_tokens: int | None):
        self.prefix, self.dtype, self.shard_tokens = prefix, dtype, shard_tokens
        self.done: list[tuple[Path, int, int]] = []  # (final prefix, documents, tokens)
        self.builder = None
        self._open()

    def _open(self) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.name = (self.prefix if self.shard_tokens is None
                     else self.prefix.with_name(f"{self.prefix.name}_{len(self.done):05d}"))
        self.tmp = self.name.with_name(self.name.name + ".partial")
        self.builder = IndexedDatasetBuilder(f"{self.tmp}.bin", dtype=self.dtype)
        self.docs = self.tokens = 0

    def add(self, ids: np.ndarray, lens: list[int]) -> None:
        # a new prefix starts with a non-empty document: none holds empty documents only
        if self.shard_tokens is not None and self.tokens >= self.shard_tokens and ids.size:
            self._close()
            self._open()
        self.builder.add_document(ids, lens)
        self.docs += 1
        self.tokens += int(ids.size)

    def _close(self) -> None:
        self.builder.finalize(f"{self.tmp}.idx")
        self.done.append((self.name, self.docs, self.tokens))
        self.builder = None

    def commit(self, meta: dict) -> None:
        """Move every prefix into place (meta, bin, then idx: a reader keys on the index)."""
        self._close()
        for name, docs, tokens in self.done:
            tmp = name.with_name(name.name + ".partial")
            Path(f"{tmp}.meta.json").write_text(json.dumps({**meta, "output_prefix": str(name), "documents": docs,
                                                             "tokens": tokens}, indent=2))
        for name, _, _ in self.done:
            tmp = name.with_name(name.name + ".partial")
            for suffix in (".meta.json", ".bin", ".idx"):
                Path(f"{tmp}{suffix}").replace(f"{name}{suffix}")
        if self.shard_tokens is not None:
            import yaml  # lazy: only the blend file needs it

            ours = {f"{name}{suffix}" for name, _, _ in self.done for suffix in (".bin", ".idx", ".meta.json")}
            for stale in _shard_files(self.prefix):  # an overwritten job's extra shards
                if str(stale) not in ours:
                    stale.unlink()
            head = ("# The blend of `mkd data preprocess --shard-tokens`: a recipe fragment (data.train and its\n"
                    "# weights, each prefix's token count: sampled in proportion to its size).\n")
            blend = {"data": {"train": [str(n) for n, _, _ in self.done],
                              "train_weights": [t for _, _, t in self.done]}}
            write_text_atomic(f"{self.prefix}.blend.yaml", head + yaml.safe_dump(blend, sort_keys=False))

    def discard(self) -> None:
        """Remove every partial file, also when the disk is full: closing the open .bin then
        fails to flush its buffer (ENOSPC), which must not stop the clean-up that frees the space."""
        if self.builder is not None:
            try:
                self.builder.data_file.close()
            except OSError:
                pass
        names = [n for n, _, _ in self.done] + ([self.name] if self.builder is not None else [])
        for name in names:
            for suffix in (".bin", ".idx", ".meta.json"):
                Path(f"{name.with_name(name.name + '.partial')}{suffix}").unlink(missing_ok=True)
        Path(f"{self.prefix}.blend.yaml.partial").unlink(missing_ok=True)


def _records(sources, key, progress_state):
    """Every record of every source, in order; progress_state[0] = the fraction of input bytes read."""
    total = sum(s.size for s in sources) or 1
    before = 0
    for src in sources:
        for record, frac in iter_records(src, key):
            progress_state[0] = (before + frac * src.size) / total
            yield record
        before += src.size


def _batched(records, size: int):
    batch: list = []
    for r in records:
        batch.append(r)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def progress_line(n_docs: int, n_tokens: int, elapsed: float, frac: float) -> str:
    """The progress line: counts, speed, the share of the input read (by bytes or rows) and the
    time left at the speed so far."""
    eta = hms(elapsed * (1 - frac) / frac) if frac > 0 else "?"
    return (f"{n_docs:,} documents | {n_tokens:,} tokens | {n_tokens / max(elapsed, 1e-9):,.0f} tokens/s | "
            f"{100 * frac:.0f}% | ETA {eta}")


def cap_workers_to_batches(workers: int, batches):
    """(workers, batches): no more workers than there are batches of documents, when the input is
    that small (a fork pool starts every worker at once; 150 for three lines is waste). Reads at
    most the batches the first fill of the pool would read anyway."""
    head = list(itertools.islice(batches, max(1, workers)))
    if len(head) < workers:
        print(f"--workers {workers}: the input has {len(head)} batch(es) of documents; using "
              f"{max(1, len(head))} worker(s)", file=sys.stderr)
        workers = max(1, len(head))
    return workers, itertools.chain(head, batches)


def _refuse_replacing_inputs(inputs: list[Path], prefix: Path) -> None:
    """No output may be an input (or the tokenizer), `--overwrite` or not: PREFIX.{bin,idx,
    meta.json}, PREFIX.blend.yaml and the shards PREFIX_NNNNN.* are compared with every input by
    resolved path, so a prefix that collides with an input (e.g. `--input docs.meta.json
    --output-prefix docs`) is refused before anything is written, never replaced at the end."""
    shard = re.compile(re.escape(prefix.name) + r"_\d{5}\.(bin|idx|meta\.json)")
    outputs = {Path(f"{prefix}{ext}").resolve() for ext in (".bin", ".idx", ".meta.json", ".blend.yaml")}
    for path in inputs:
        resolved = Path(path).resolve()
        if resolved in outputs or (resolved.parent == prefix.resolve().parent and shard.fullmatch(resolved.name)):
            raise ConfigError(f"--output-prefix {prefix} would write over the input {path}; inputs are never "
                              "replaced: choose another --output-prefix")


def preprocess(inputs: list, tokenizer_path: Path, output_prefix: Path, *,
               json_key: str = "text", workers: int = 2, eod_token: str | None = None,
               batch_docs: int = 64, progress: bool = True, shard_tokens: int | None = None) -> PreprocessSummary:
    from megatron.core.datasets.indexed_dataset import DType

    if shard_tokens is not None and shard_tokens < 1:
        raise ConfigError(f"--shard-tokens must be a positive number of tokens, got {shard_tokens}")
    sources = open_sources(list(inputs), json_key)  # every input checked before anything is written
    _refuse_replacing_inputs([src.path for src in sources] + [Path(tokenizer_path)], Path(output_prefix))
    tokenizer = Tokenizer(tokenizer_path, eod_token)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    output_prefix = Path(output_prefix)
    try:
        output_prefix.parent.mkdir(parents=True, exist_ok=True)
        writer = _Writer(output_prefix, dtype, shard_tokens)
    except OSError as exc:
        raise ConfigError(f"cannot write {output_prefix}.* ({exc.strerror or exc}); choose a writable "
                          "--output-prefix") from exc
    state = [0.0]
    n_docs = n_tokens = 0
    t0 = last = time.perf_counter()
    previous_term = signal.getsignal(signal.SIGTERM)
    if previous_term in (signal.SIG_DFL, None):  # a terminated job cleans up as a failed one does
        signal.signal(signal.SIGTERM, _terminate)
    try:
        batches = _batched(_records(sources, json_key, state), batch_docs)
        workers, batches = cap_workers_to_batches(workers, batches)
        with ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("fork"), initializer=_init_worker,
                                 initargs=(str(tokenizer_path), eod_token)) as pool:
            pending: deque = deque()
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < IN_FLIGHT_PER_WORKER * max(1, workers):
                    batch = next(batches, None)
                    if batch is None:
                        exhausted = True
                    else:
                        pending.append((pool.submit(_encode_batch, batch), state[0]))
                if not pending:
                    break
                future, frac = pending.popleft()
                try:
                    encoded = future.result()
                except BrokenProcessPool as exc:
                    raise ConfigError("a tokenizer worker died (out of memory? killed?); nothing was written: "
                                      "run again, with fewer --workers if memory is short") from exc
                for ids, lens in encoded:
                    writer.add(ids, lens)
                    n_docs += 1
                    n_tokens += int(ids.size)
                now = time.perf_counter()
                if progress and now - last > 1.0:
                    last = now
                    print(f"\r  {progress_line(n_docs, n_tokens, now - t0, frac)}  ", end="", file=sys.stderr,
                          flush=True)
        if n_docs == 0 or n_tokens == 0:
            raise ConfigError(f"no documents found in {', '.join(map(str, inputs))}; check the files and "
                              f"--key ({json_key})")
        seconds = time.perf_counter() - t0
        summary = PreprocessSummary(str(output_prefix), n_docs, n_tokens, round(seconds, 3),
                                    round(n_tokens / max(seconds, 1e-9)), tokenizer.sha256, np.dtype(dtype).name)
        meta = {**asdict(summary), "tokenizer": tokenizer.describe(), "inputs": [str(s.path) for s in sources],
                "key": json_key}
        for k in ("prefixes", "prefix_tokens"):
            meta.pop(k)
        writer.commit(meta)
    except BaseException:
        writer.discard()  # a failed or interrupted job leaves nothing that looks like a dataset
        raise
    finally:
        if previous_term in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if progress:
            print("\r", end="", file=sys.stderr)
    summary.prefixes = [str(n) for n, _, _ in writer.done]
    summary.prefix_tokens = [t for _, _, t in writer.done]
    return summary
