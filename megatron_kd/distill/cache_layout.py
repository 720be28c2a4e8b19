"""Where a teacher cache's files are (read by the writer, the reader and the window alike) and
what its encodings may be."""

from __future__ import annotations

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
