"""Where a teacher cache's files are (read by the writer, the reader and the window alike)."""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
COMPLETE = "COMPLETE"
SHARD_INDEX = "index.json"  # per shard: each file's bytes and CRC-32, written last


def shard_dir(root: Path, j: int) -> Path:
    return Path(root) / f"shard_{j:06d}"
