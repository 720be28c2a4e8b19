"""What a tokenized data prefix holds, as one short string: the identity a teacher cache, the
run's dataset-index cache (RUN_DIR/data_cache) and a checkpoint record of their data.

A prefix's path and `.bin` size do not say what it holds: the same documents tokenized again in
another order have both, and a cache or index built on the old order would then serve the wrong
rows silently (or fail with an IndexError deep in megatron-core). The identity hashes content,
cheaply enough to compute at every launch:
- the whole `.idx` (every document's length and offset: re-tokenizing changes it almost always);
- SAMPLED_BLOCKS blocks of BLOCK_BYTES of the `.bin` at offsets spread evenly over it (the same
  offsets for a given size), and the size itself; a small `.bin` is hashed whole.
Measured (tests/data/test_data_identity.py): well under a second per GB, since the `.bin` is
sampled (4 MiB read whatever its size) and the `.idx` is ~1-2 % of it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from megatron_kd.errors import ConfigError

BLOCK_BYTES = 64 << 10
SAMPLED_BLOCKS = 64
_READ = 16 << 20  # the .idx is hashed in pieces of this size


def prefix_identity(prefix: str | Path) -> str:
    """"sha256:<hex>" of a prefix's `.idx` (whole), `.bin` size and sampled `.bin` blocks."""
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    digest = hashlib.sha256()
    try:
        with open(idx, "rb") as f:
            while piece := f.read(_READ):
                digest.update(piece)
        size = bin_.stat().st_size
        digest.update(f"|bin {size}|".encode())
        with open(bin_, "rb") as f:
            for offset in block_offsets(size):
                f.seek(offset)
                digest.update(f.read(BLOCK_BYTES))
    except OSError as exc:
        raise ConfigError(f"data prefix '{prefix}': cannot read {exc.filename or prefix} ({exc.strerror}); "
                          "create it with `mkd data preprocess`") from exc
    return f"sha256:{digest.hexdigest()}"


def block_offsets(size: int) -> list[int]:
    """Where the sampled blocks of a `.bin` of `size` bytes start: the first and last block and
    evenly between (one block covering everything when the file is small)."""
    if size <= BLOCK_BYTES * SAMPLED_BLOCKS:
        return list(range(0, size, BLOCK_BYTES))
    last = size - BLOCK_BYTES
    return [last * i // (SAMPLED_BLOCKS - 1) for i in range(SAMPLED_BLOCKS)]


def data_identity(prefixes) -> dict[str, str]:
    """{resolved prefix: its identity} for every prefix of a run (train and validation)."""
    return {str(Path(p).resolve()): prefix_identity(p) for p in prefixes}


def run_data_identity(cfg) -> dict:
    """What a run's training data is, for a checkpoint's record: {"mock": true} or each train
    prefix's identity (validation sets do not decide where a resumed run's data stream is)."""
    if cfg.data.mock:
        return {"mock": True}
    return {"prefixes": data_identity(cfg.data.train)}


def index_cache_key(prefixes) -> str:
    """A short name for megatron-core's dataset-index directory of these prefixes: re-tokenized
    data gets a fresh directory (its index is built again) instead of the old data's index."""
    ids = data_identity(prefixes)
    body = "\n".join(f"{p} {ident}" for p, ident in sorted(ids.items()))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def stream_difference(saved: list[tuple[str, str | None]], now: list[tuple[str, str]]) -> str | None:
    """Where two training streams, each (prefix, identity) in order, part: None when the same
    prefixes' bytes come in the same order wherever they lie now (a project moved or copied to
    another directory: the stream depends on the order and the bytes, not on absolute paths);
    else another order, another number of prefixes, or the first position whose bytes differ,
    named by both paths and identities."""
    a, b = [ident for _, ident in saved], [ident for _, ident in now]
    if a == b:
        return None
    if sorted(map(str, a)) == sorted(map(str, b)):
        return "the same prefixes' data in another order (the order decides the samples)"
    if len(a) != len(b):
        return f"{len(b)} training prefix(es), where there were {len(a)}"
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return (f"training prefix {i + 1}: {saved[i][0]} was {_short(a[i])}, {now[i][0]} is {_short(b[i])} "
            "(re-tokenized or replaced since)")


def _short(identity: str | None) -> str:
    if identity is None:
        return "absent"
    return identity[:19] + "…" if len(identity) > 20 else identity


def check_resume_data(cfg, saved_state: dict, ckpt) -> None:
    """A run resumes on the data its checkpoint was trained on, or not at all: its data position
    (consumed samples) counts samples of that data's index. Data tokenized again, replaced or
    swapped between mock and real is one line naming both identities. Checkpoints written before
    the record existed (no 'data' key) are let through, as their teacher record is."""
    saved = saved_state.get("data")
    if saved is None:
        return
    now = run_data_identity(cfg)
    if saved == now:
        return
    if saved.get("mock") or now.get("mock"):
        what = f"{'mock' if saved.get('mock') else 'real'} data, and this run names " \
               f"{'mock' if now.get('mock') else 'real'} data"
    else:
        what = stream_difference(list((saved.get("prefixes") or {}).items()),
                                 list((now.get("prefixes") or {}).items()))
        if what is None:
            return
    raise ConfigError(f"checkpoint {ckpt} was trained on other data than this run's: {what}; resume with the data "
                      "it was trained on, or start a new run.dir (or --overwrite) on the new data")
