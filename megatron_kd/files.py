"""The one way the package writes a small file that others read (configs, state files, manifests,
the `latest` pointer, reports, tables): a sibling temporary file, then an atomic rename. A reader
sees the old file or the new one, never half of one; a write that fails (a full disk) leaves the
old file as it was and no temporary behind. Large outputs (checkpoints, caches, datasets) are
directories staged as NAME.partial and renamed by their writers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_text_atomic(path: Path | str, text: str) -> None:
    """Replace `path` by `text` (UTF-8) in one rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: the old file stays, the temporary goes
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
