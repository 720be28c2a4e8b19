"""A windowed teacher cache (distill/cache_window.py): the writer keeps at most N shards on disk,
waits for its readers' checkpoints and deletes what they all passed; a reader behind a deleted
shard, a window its checkpoints cannot fit in and a writer whose readers never come are one line
each. The real shard writer, the real reader (TeacherCache) with its registration, and real
checkpoint state files for the readers' progress; writer and readers are threads."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from megatron_kd.checkpoint.refs import write_state
from megatron_kd.distill.cache import MANIFEST, TeacherCache, shard_dir
from megatron_kd.distill.cache_window import READERS, Reader, Window, check_reader, deleted_below
from megatron_kd.errors import ConfigError
from tests.distill.test_cache_streaming import ROWS, _manifest, _shard

SHARDS, WINDOW = 8, 3


def _checkpoint(run_dir, step):
    """A checkpoint's state file, written as the Checkpointer writes it (what Reader.safe_shard
    reads: the run's latest checkpoint and its step)."""
    d = run_dir / "checkpoints" / f"iter_{step:07d}"
    d.mkdir(parents=True)
    write_state(d, {"step": step, "kind": "interval", "tokens": step, "consumed_samples": step})


def test_writer_stays_in_its_window_and_deletes_what_every_reader_passed(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    _manifest(root, SHARDS)
    window = Window(root, WINDOW, readers=2, wait_s=20, deletes=True)
    on_disk = []

    def write():
        for j in range(SHARDS):
            window.wait_to_write(j, poll_s=0.01)
            _shard(root, j)
            on_disk.append(window.on_disk())

    def read(run_dir, gbs):
        cache = TeacherCache(root, wait_s=20, reader=Reader(root, run_dir, ROWS, gbs))
        for step in range(SHARDS * ROWS // gbs):  # a step, then a checkpoint after it
            cache.rows(torch.arange(step * gbs, (step + 1) * gbs))
            _checkpoint(run_dir, step + 1)

    threads = [threading.Thread(target=write), threading.Thread(target=read, args=(tmp_path / "a", 2)),
               threading.Thread(target=read, args=(tmp_path / "b", 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert len(on_disk) == SHARDS and max(on_disk) <= WINDOW, on_disk  # never more than the window
    assert deleted_below(root) >= SHARDS - WINDOW  # the early shards are gone
    regs = sorted((root / READERS).glob("*.json"))
    assert len(regs) == 2 and {json.loads(f.read_text())["reading"] for f in regs} == {SHARDS - 1}
    # a reader that resumes behind a deleted shard is refused in one line
    with pytest.raises(ConfigError, match=r"shard 0 was deleted by the cache job's window .* resume from a later"):
        TeacherCache(root).rows(torch.tensor([0]))
    assert not shard_dir(root, 0).exists()


def test_the_checkpoint_interval_must_fit_the_window_and_readers_must_come(tmp_path):
    check_reader(tmp_path, 4, rows_per_shard=8, global_batch=8, save_interval=2)  # 2 shards + 2 <= 4
    with pytest.raises(ConfigError, match=r"checkpoints every 4 steps \(4 shards of 8 samples\).*"
                                          r"checkpoint.save_interval <= 2 or write the cache with a larger"):
        check_reader(tmp_path, 4, rows_per_shard=8, global_batch=8, save_interval=4)
    with pytest.raises(ConfigError, match=r"checkpoints never \(checkpoint.save_interval=0\)"):
        check_reader(tmp_path, 4, rows_per_shard=8, global_batch=8, save_interval=0)
    root = tmp_path / "c"
    root.mkdir()
    (root / MANIFEST).write_text("{}")
    window = Window(root, 2, readers=1, wait_s=0.2, deletes=True)
    window.wait_to_write(0)
    window.wait_to_write(1)  # the first N shards need no reader
    with pytest.raises(ConfigError, match=r"shard 2 waited 0.2s for the window of 2 shards \(0 of 1 readers "
                                          r"registered: none\); start the students, or raise --reader-wait"):
        window.wait_to_write(2, poll_s=0.05)
