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


@contextlib.contextmanager
def staged_directory(out: Path | str):
    """Build a new directory as OUT.partial and rename it to OUT once complete (one process):
    a writer that fails (bad input, a full disk, Ctrl-C) leaves nothing at OUT to block the
    corrected re-run, and its partial copy is removed. OUT must not exist or be empty (checked
    by the caller, which knows the flag to name)."""
    import shutil

    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # a writer killed before it could clean up
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty (checked by the caller)
    partial.rename(out)
