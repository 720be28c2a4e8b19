"""Where a teacher cache's files are (read by the writer, the reader and the window alike) and
what its encodings may be."""

from __future__ import annotations

import os
from pathlib import Path

MANIFEST = "manifest.json"
COMPLETE = "COMPLETE"
SHARD_INDEX = "index.json"  # per shard: each file's bytes and CRC-32, written last
# what an encoding may be (cache_encoding.Encoding checks them; sweeps check a cache: mapping
# against them without importing numpy and torch)
VALUE_DTYPES = ("fp32", "fp16", "bf16")
ZSTD_LEVELS = range(0, 23)  # 0 = off
MAX_DRAWS = 255  # draws per token of a sampled cache: counts in at most 8 bits


def shard_dir(root: Path, j: int) -> Path:
    return Path(root) / f"shard_{j:06d}"


def complete_shards(root: Path, num_shards: int | None = None) -> list[int]:
    """The indices of the shards written whole (their index file is there), sorted, found by
    listing the directory: what a manifest or a state file claims is checked against these,
    never looped over (a manifest claiming 10^12 shards must not make a loop of 10^12)."""
    found = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        if name.startswith("shard_") and name[6:].isdigit() and (Path(entry.path) / SHARD_INDEX).is_file():
            j = int(name[6:])
            if num_shards is None or j < num_shards:
                found.append(j)
    return sorted(found)


def first_gap(present: list[int], start: int) -> int:
    """The first index >= start that is not in `present` (sorted): bounded by len(present)."""
    j = start
    for k in present:
        if k == j:
            j += 1
        elif k > j:
            break
    return j
