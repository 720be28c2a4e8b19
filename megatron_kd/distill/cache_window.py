"""A bounded window over a streamed teacher cache (`mkd teacher-cache --window N --readers R`):
the cache job keeps at most N shards on disk, so a one-off run beside its teacher needs O(N)
shards of disk, not the whole stream.

The students register in the cache directory (`readers/<run>-r<rank>.json`, written by each rank
that reads rows whenever it opens a new shard; R counts runs): the shard it reads now and the shard of its last saved
checkpoint ("safe": a resumed run restarts there, so nothing at or after it may be deleted). The
writer writes shard j only once j < min(safe) + N over the R readers (it waits for all R to
register before it passes the first N), and deletes every shard below min(safe); `window.json`
records how far it has deleted. A reader that needs a deleted shard (it resumed from an older
checkpoint than it registered, or it registered late) is refused in one line, and so is a
window that a reader's checkpoint interval cannot fit in (the writer would wait for a checkpoint
that waits for a shard).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

from megatron_kd.checkpoint.refs import latest_checkpoint, read_state
from megatron_kd.config.validate import MAX_WAIT_S
from megatron_kd.distill.cache_layout import SHARD_INDEX, complete_shards, first_gap, shard_dir
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic

WINDOW_FILE = "window.json"  # {"window": N, "readers": R, "deleted_below": k}
READERS = "readers"
MAX_WINDOW = 10**9  # --window and --readers above this are not a cache's own (a manifest edited)


def deleted_below(root: Path, num_shards: int | None = None) -> int:
    """The first shard the window has not deleted (0 for a cache without a window): a whole
    number in 0..num_shards, checked before anything loops from it (-10^12 would)."""
    f = Path(root) / WINDOW_FILE
    if not f.is_file():
        return 0
    try:
        k = json.loads(f.read_text())["deleted_below"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"teacher cache {root}: {WINDOW_FILE} is damaged ({exc}); the window's state is "
                          "lost: write the cache again") from exc
    top = num_shards if num_shards is not None else math.inf
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= top:
        raise ConfigError(f"teacher cache {root}: {WINDOW_FILE} has 'deleted_below': {str(k)[:40]}, not a shard "
                          f"count in 0..{top} (edited or damaged); the window's state is lost: write the cache "
                          "again")
    return k


def refuse_deleted(root: Path, j: int) -> None:
    k = deleted_below(root)
    if j < k:
        raise ConfigError(f"teacher cache {root}: shard {j} was deleted by the cache job's window (every "
                          f"registered reader had checkpointed past it; shards below {k} are gone); this run "
                          "resumed or started behind it: write the cache again without --window, or resume "
                          "from a later checkpoint")


def check_reader(root: Path, window: int, rows_per_shard: int, global_batch: int, save_interval: int) -> None:
    """Before a run starts: its checkpoints come often enough for the window. A reader may read
    up to its checkpoint interval (plus one shard a global batch straddles) past its last
    checkpoint, and the writer stays within `window` shards of that checkpoint."""
    ckpt_shards = math.ceil(save_interval * global_batch / rows_per_shard) if save_interval else None
    if ckpt_shards is None or ckpt_shards + 2 > window:
        raise ConfigError(
            f"teacher cache {root} keeps a window of {window} shards, but this run checkpoints "
            + (f"every {save_interval} steps ({ckpt_shards} shards of {rows_per_shard} samples)"
               if save_interval else "never (checkpoint.save_interval=0)")
            + ": the cache job would wait for a checkpoint that waits for a shard; set "
              f"checkpoint.save_interval <= {max(1, (window - 2) * rows_per_shard // global_batch)} or write "
              "the cache with a larger --window")


_READER_SCHEMA = {"run_dir": str, "reading": int, "safe": int}  # what Reader.moved_to writes (and more)


def _reader_problem(entry) -> str | None:
    """What is wrong with a reader's registration, in words (None: nothing)."""
    if not isinstance(entry, dict):
        return "is not a JSON object"
    for key, kind in _READER_SCHEMA.items():
        value = entry.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"has '{key}': {json.dumps(value)[:40]}, not {'a string' if kind is str else 'an integer'}"
    if not 0 <= entry["safe"] <= entry["reading"]:
        return f"has 'safe': {entry['safe']} and 'reading': {entry['reading']}, not 0 <= safe <= reading"
    return None


class Reader:
    """One reading rank's registration in a windowed cache, under its run's name."""

    def __init__(self, root: Path, run_dir: Path, rows_per_shard: int, global_batch: int, rank: int = 0):
        self.root, self.run_dir = Path(root), Path(run_dir)
        self.rows, self.gbs = rows_per_shard, global_batch
        name = hashlib.sha256(str(self.run_dir.resolve()).encode()).hexdigest()[:16]
        self.path = self.root / READERS / f"{name}-r{rank}.json"
        self.reading = -1

    def safe_shard(self) -> int:
        """The shard of the first sample after this run's latest checkpoint (where a resume starts)."""
        latest = latest_checkpoint(self.run_dir / "checkpoints")
        step = int(read_state(latest).get("step", 0)) if latest is not None else 0
        return step * self.gbs // self.rows

    def moved_to(self, j: int) -> None:
        if j == self.reading:
            return
        self.reading = j
        self.path.parent.mkdir(exist_ok=True)
        write_text_atomic(self.path, json.dumps({"run_dir": str(self.run_dir), "reading": j,
                                                 "safe": min(j, self.safe_shard()), "pid": os.getpid(),
                                                 "updated": time.time()}))


class Window:
    """The writer's side: when it may write a shard, and which it may delete."""

    def __init__(self, root: Path, window: int, readers: int, wait_s: float, deletes: bool,
                 num_shards: int | None = None):
        if window < 2 or readers < 1:
            raise ConfigError(f"--window needs at least 2 shards and --readers at least 1 (got {window}, {readers})")
        if not (isinstance(wait_s, (int, float)) and math.isfinite(wait_s) and 0 < wait_s <= MAX_WAIT_S):
            raise ConfigError(f"--reader-wait must be a finite number of seconds above 0 and at most {MAX_WAIT_S:,} "
                              f"(30 days), got {wait_s}; e.g. --reader-wait 3600")
        self.num_shards = num_shards  # the manifest's count: window.json is checked against it
        self.root, self.window, self.readers, self.wait_s = Path(root), window, readers, wait_s
        self.deletes = deletes  # every rank of the job may delete (idempotent: only what all readers passed)
        self.max_on_disk = 0

    def registered(self) -> list[dict]:
        """Every reader's registration, checked against its schema (a hand-made file is one line,
        not a traceback or a shard index of 10^12); each with its file's name under "file"."""
        out = []
        for f in sorted((self.root / READERS).glob("*.json")):
            try:
                entry = json.loads(f.read_text())
            except ValueError:  # being replaced (write_text_atomic renames): read it next time
                continue
            except FileNotFoundError:  # its run just removed or replaced it
                continue
            problem = _reader_problem(entry)
            if problem:
                raise ConfigError(f"teacher cache {self.root}: {READERS}/{f.name} {problem}: it is not a "
                                  "student's registration (they write those themselves); delete it and run "
                                  "the job again")
            out.append(dict(entry, file=f.name))
        return out

    def _safe(self) -> int | None:
        """The oldest checkpoint's shard over the readers, once all R runs have registered. No
        reader can have checkpointed past the first shard not written yet (it reads them in
        order), so an entry that claims to is not trusted: one line, nothing deleted for it."""
        regs = self.registered()
        runs = {r["run_dir"] for r in regs}
        if len(runs) < self.readers:
            return None
        gone = deleted_below(self.root, self.num_shards)
        frontier = first_gap(complete_shards(self.root, self.num_shards), gone)
        for r in regs:
            if r["safe"] > frontier:
                raise ConfigError(f"teacher cache {self.root}: {READERS}/{r['file']} says its run checkpointed "
                                  f"at shard {r['safe']}, but only the shards below {frontier} are written: no "
                                  "reader of this cache wrote that (or shards were deleted by hand since); delete "
                                  "it and run the job again")
        return min(r["safe"] for r in regs)

    def collect(self, safe: int | None) -> None:
        """Delete the shards below `safe` (every registered reader's checkpoint)."""
        k = deleted_below(self.root, self.num_shards)
        if not self.deletes or safe is None or safe <= k:
            return
        # recorded first: another rank of the job that lists the shards between the deletions
        # and the record would otherwise see a gap below a reader's checkpoint (_safe refuses that)
        write_text_atomic(self.root / WINDOW_FILE, json.dumps({"window": self.window, "readers": self.readers,
                                                               "deleted_below": safe}))
        for j in range(k, safe):  # safe <= the first unwritten shard (_safe): at most the window
            shutil.rmtree(shard_dir(self.root, j), ignore_errors=True)

    def on_disk(self) -> int:
        n = sum(1 for d in self.root.glob("shard_*") if (d / SHARD_INDEX).is_file())
        self.max_on_disk = max(self.max_on_disk, n)
        return n

    def wait_to_write(self, j: int, poll_s: float = 0.5) -> None:
        """Until shard j fits in the window (deleting what the readers have passed meanwhile)."""
        deadline = time.monotonic() + self.wait_s
        while True:
            safe = self._safe()  # one reading for both: what is deleted and what may be written
            self.collect(safe)
            limit = self.window if safe is None else safe + self.window  # the first shard it may not write
            if j < limit:
                return
            if time.monotonic() >= deadline:
                regs = self.registered()
                where = ", ".join(f"{r.get('run_dir')} at shard {r.get('reading')} (checkpoint at shard "
                                  f"{r.get('safe')})" for r in regs) or "none"
                raise ConfigError(f"teacher cache {self.root}: shard {j} waited {self.wait_s:g}s for the window "
                                  f"of {self.window} shards ({len({r.get('run_dir') for r in regs})} of "
                                  f"{self.readers} readers registered: "
                                  f"{where}); start the students, or raise --reader-wait; run the job again "
                                  "to continue")
            time.sleep(poll_s)
