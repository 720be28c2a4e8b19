"""Text / JSONL -> megatron-core IndexedDataset (.bin/.idx), tokenized by several workers.

Inputs: `.jsonl` (one document per line, text in a configurable field) or `.txt` (one document
per non-empty line). Every document ends with the tokenizer's end-of-document token. Next to
`PREFIX.bin/.idx` a `PREFIX.meta.json` records the tokenizer (sha256), document and token counts,
so a run can refuse data tokenized by another tokenizer than its model's.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from megatron_kd.data.tokenizer import Tokenizer
from megatron_kd.errors import ConfigError

_WORKER_TOKENIZER: Tokenizer | None = None


@dataclass
class PreprocessSummary:
    output_prefix: str
    documents: int
    tokens: int
    seconds: float
    tokens_per_second: float
    tokenizer_sha256: str
    dtype: str


def iter_documents(paths: list[Path], json_key: str) -> Iterator[str]:
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"input '{path}' not found")
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if path.suffix in (".jsonl", ".json"):
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg}); one JSON "
                                          "object per line is expected") from exc
                    if not isinstance(record, dict) or json_key not in record:
                        raise ConfigError(f"{path}:{lineno}: no '{json_key}' field; pass "
                                          "--json-key with the field that holds the text")
                    text = record[json_key]
                else:
                    text = line.rstrip("\n")
                if text:
                    yield text


def _init_worker(tokenizer_path: str, eod_token: str | None) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = Tokenizer(tokenizer_path, eod_token)


def _encode_batch(texts: list[str]) -> list[np.ndarray]:
    tok = _WORKER_TOKENIZER
    return [np.asarray(tok.encode(t) + [tok.eod], dtype=np.int64) for t in texts]


def _batches(docs: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for d in docs:
        batch.append(d)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_meta(prefix: str | Path) -> dict | None:
    path = Path(f"{prefix}.meta.json")
    return json.loads(path.read_text()) if path.is_file() else None


def preprocess(inputs: list[Path], tokenizer_path: Path, output_prefix: Path, *,
               json_key: str = "text", workers: int = 2, eod_token: str | None = None,
               batch_docs: int = 64, progress: bool = True) -> PreprocessSummary:
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    tokenizer = Tokenizer(tokenizer_path, eod_token)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    output_prefix = Path(output_prefix)
    output_prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = output_prefix.with_name(output_prefix.name + ".partial")
    builder = IndexedDatasetBuilder(f"{tmp_prefix}.bin", dtype=dtype)
    docs = iter_documents([Path(p) for p in inputs], json_key)
    n_docs = n_tokens = 0
    t0 = last = time.perf_counter()
    ctx = mp.get_context("fork")
    with ctx.Pool(max(1, workers), initializer=_init_worker,
                  initargs=(str(tokenizer_path), eod_token)) as pool:
        for encoded in pool.imap(_encode_batch, _batches(docs, batch_docs), chunksize=4):
            for arr in encoded:
                builder.add_document(arr, [arr.size])
                n_docs += 1
                n_tokens += arr.size
            now = time.perf_counter()
            if progress and now - last > 1.0:
                last = now
                print(f"\r  {n_docs:,} documents | {n_tokens:,} tokens | "
                      f"{n_tokens / (now - t0):,.0f} tokens/s", end="", file=sys.stderr, flush=True)
    if n_docs == 0:
        Path(f"{tmp_prefix}.bin").unlink(missing_ok=True)
        raise ConfigError(f"no documents found in {', '.join(map(str, inputs))}; check the files "
                          f"and --json-key ({json_key})")
    builder.finalize(f"{tmp_prefix}.idx")
    seconds = time.perf_counter() - t0
    summary = PreprocessSummary(str(output_prefix), n_docs, n_tokens, round(seconds, 3),
                                round(n_tokens / max(seconds, 1e-9)), tokenizer.sha256,
                                np.dtype(dtype).name)
    meta = {**asdict(summary), "tokenizer": tokenizer.describe(), "inputs": [str(p) for p in inputs]}
    # Move into place only when complete, index last, so a crash never leaves a half dataset.
    Path(f"{tmp_prefix}.bin").replace(f"{output_prefix}.bin")
    Path(f"{tmp_prefix}.idx").replace(f"{output_prefix}.idx")
    Path(f"{output_prefix}.meta.json").write_text(json.dumps(meta, indent=2))
    if progress:
        print("\r", end="", file=sys.stderr)
    return summary
