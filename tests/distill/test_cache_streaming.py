"""Streaming: a student reads a teacher cache while its job still writes it (teacher.cache_wait_s).
Each shard is waited for up to the limit; past it, one line naming the shard and whether the
cache job still holds the directory. Real shard writer and reader; the writer is a thread."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time

import pytest
import torch

from megatron_kd.distill import cache as cache_module
from megatron_kd.distill.cache import MANIFEST, TeacherCache, teacher_rows
from megatron_kd.distill.cache_encoding import FORMAT, Encoding
from megatron_kd.errors import ConfigError
from megatron_kd.training.run_dir import LOCK_FILE
from megatron_kd.training.teacher_cache import _write_shard

VOCAB, SEQ, K, ROWS = 64, 5, 4, 2
ENC = Encoding.for_vocab(VOCAB, "fp16")


def _shard(root, j):
    g = torch.Generator().manual_seed(j)
    _write_shard(root, j, teacher_rows(torch.randn(SEQ, ROWS, VOCAB, generator=g),
                                       torch.randint(0, VOCAB, (SEQ, ROWS), generator=g), VOCAB, K, None), ENC)


def _manifest(root, shards=3):
    m = {"fingerprint": {"top_k": K, "vocab_size": VOCAB}, "num_samples": shards * ROWS, "shard_rows": ROWS,
         "num_shards": shards, "seq_length": SEQ, "format": FORMAT, "encoding": ENC.to_manifest()}
    (root / MANIFEST).write_text(json.dumps(m))


def test_reader_waits_for_a_shard_being_written(tmp_path):
    assert cache_module.WRITER_LOCK == LOCK_FILE  # the lock the cache job takes (run_dir.lock_run_dir)
    root = tmp_path / "c"
    root.mkdir()
    writer = threading.Thread(target=lambda: (time.sleep(0.6), _manifest(root), _shard(root, 0),
                                              time.sleep(0.6), _shard(root, 1)))
    writer.start()
    t0 = time.monotonic()
    cache = TeacherCache(root, wait_s=20)  # waits for the manifest
    first = cache.rows(torch.tensor([0, 1]))
    second = cache.rows(torch.tensor([2, 3]))  # shard 1: written ~0.6 s later
    writer.join()
    assert time.monotonic() - t0 >= 1.0
    assert first["ids"].shape == second["ids"].shape == (ROWS, SEQ, K)
    again = TeacherCache(root).rows(torch.tensor([2, 3]))  # as a reader after the fact sees it
    assert all(torch.equal(again[k], second[k]) for k in again)


def test_shard_not_written_in_time_is_one_line_saying_whether_the_writer_lives(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    _manifest(root)
    _shard(root, 0)
    cache = TeacherCache(root, wait_s=0.3)
    cache.rows(torch.tensor([1]))
    with pytest.raises(ConfigError, match=r"shard_000001 was not written within teacher.cache_wait_s=0.3s; "
                                          r"no cache job has started on it"):
        cache.rows(torch.tensor([2]))
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT)  # a live cache job holds the lock
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242\n")
    try:
        with pytest.raises(ConfigError, match=r"its cache job \(pid 4242\) is still running: raise "
                                              r"teacher.cache_wait_s"):
            TeacherCache(root, wait_s=0.3).rows(torch.tensor([4]))
    finally:
        os.close(fd)  # the job ends: the lock file stays, nobody holds it
    with pytest.raises(ConfigError, match=r"no cache job is running on it \(it died or finished early\)"):
        TeacherCache(root, wait_s=0.3).rows(torch.tensor([4]))
    with pytest.raises(ConfigError, match=r"has no manifest after teacher.cache_wait_s=0.2s"):
        TeacherCache(tmp_path / "never", wait_s=0.2)
