"""Nothing a teacher cache's files claim makes a loop, an allocation or a deletion unbounded: the
manifest's shard count and window.json's `deleted_below` are checked against the shard
directories that exist before anything loops over them; a zstd file is decompressed no further
than its recorded shape's size (a 128 KB shard with a forged CRC inflated to 4.4 GB; a frame that
claims 1 TB ran out of memory and blamed the model); a hand-made `readers/*.json` is checked
against the reader schema and trusted no further than the shards written (it made the writer
delete every shard, then loop); `--reader-wait nan` is refused (it waited forever). A cache job
on a full disk names the file and leaves no partial shard. Each one line, exit 2 (input) or 4
(the machine). Real shard writer, reader, window and CLI."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import tracemalloc

import numpy as np
import pytest
import torch
import zstandard

from megatron_kd.checkpoint.refs import file_checksum
from megatron_kd.distill.cache import COMPLETE, MANIFEST, TeacherCache, shard_dir, teacher_rows
from megatron_kd.distill.cache_encoding import FORMAT, Encoding
from megatron_kd.distill.cache_window import READERS, WINDOW_FILE, Window
from megatron_kd.errors import ConfigError
from megatron_kd.training.teacher_cache import _write_shard, verify_cache
from tests import helpers

VOCAB, SEQ, K, ROWS, SHARDS = 64, 5, 4, 2, 3
ENC = Encoding.for_vocab(VOCAB, "fp16", zstd=3)


@contextlib.contextmanager
def _within(seconds: int):
    """Fail instead of hanging: an unbounded loop is interrupted by SIGALRM after `seconds`."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: an unbounded loop")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def cache(tmp_path):
    """A complete fp16 + zstd top-K cache of SHARDS shards from real teacher rows."""
    root = tmp_path / "c"
    root.mkdir()
    for j in range(SHARDS):
        g = torch.Generator().manual_seed(j)
        rows = teacher_rows(torch.randn(SEQ, ROWS, VOCAB, generator=g),
                            torch.randint(0, VOCAB, (SEQ, ROWS), generator=g), VOCAB, K, None)
        _write_shard(root, j, rows, ENC)
    m = {"fingerprint": {"top_k": K, "vocab_size": VOCAB}, "num_samples": SHARDS * ROWS, "shard_rows": ROWS,
         "num_shards": SHARDS, "seq_length": SEQ, "format": FORMAT, "encoding": ENC.to_manifest()}
    (root / MANIFEST).write_text(json.dumps(m))
    (root / COMPLETE).write_text("")
    return root


def _edit_manifest(root, **edit):
    m = json.loads((root / MANIFEST).read_text())
    (root / MANIFEST).write_text(json.dumps(m | edit))


def _forge(f, payload: bytes) -> None:
    """Replace a shard file and re-forge its index entry (size and CRC), as a forger would."""
    f.write_bytes(payload)
    index = json.loads((f.parent / "index.json").read_text())
    index[f.name] = {"bytes": f.stat().st_size, "crc32": file_checksum(f)}
    (f.parent / "index.json").write_text(json.dumps(index))


def test_a_manifest_claiming_10_12_shards_is_counted_against_the_shards_there(cache):
    _edit_manifest(cache, num_shards=10**12, num_samples=10**12 * ROWS)  # consistent with each other
    tracemalloc.start()
    try:
        with _within(20), pytest.raises(ConfigError, match=r"shard_000003 is missing .*\(999999999997 of 10"):
            verify_cache(cache)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_a_negative_deleted_below_is_refused_before_any_loop(cache):
    (cache / WINDOW_FILE).write_text(json.dumps({"window": 3, "readers": 1, "deleted_below": -10**12}))
    with _within(20):
        with pytest.raises(ConfigError, match=r"window.json has 'deleted_below': -1000000000000, not a shard count"):
            verify_cache(cache)
        with pytest.raises(ConfigError, match=r"'deleted_below': -1000000000000"):
            Window(cache, 3, 1, wait_s=1, deletes=True, num_shards=SHARDS).wait_to_write(1, poll_s=0.01)
    assert all(shard_dir(cache, j).is_dir() for j in range(SHARDS))


def _zeros_npy(nbytes: int) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros(nbytes // 2, dtype=np.float16))
    return buf.getvalue()


@pytest.mark.parametrize("records_size", [True, False], ids=["frame_says_its_size", "frame_says_nothing"])
def test_a_zstd_bomb_is_refused_at_its_recorded_size(cache, records_size):
    """64 MiB of zeros in ~2 KB of zstd, its CRC forged: refused before it is held in memory,
    whether the frame states its size or not (then the streaming decoder stops at the bound)."""
    bomb = zstandard.ZstdCompressor(level=3, write_content_size=records_size).compress(_zeros_npy(64 << 20))
    assert len(bomb) < 128 << 10
    _forge(shard_dir(cache, 1) / "logp.npy.zst", bomb)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as err:
            TeacherCache(cache).rows(torch.tensor([2]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    line = str(err.value)
    assert "shard_000001/logp.npy.zst decompresses past its recorded size" in line
    assert "the cache is damaged, rebuild it" in line and "\n" not in line
    assert peak < 32 << 20, peak  # the recorded size is ~100 bytes of payload: nowhere near 64 MiB


def test_a_frame_claiming_1_tb_is_the_input_s_fault_exit_2(cache):
    f = shard_dir(cache, 0) / "logp.npy.zst"
    # a zstd frame header (magic, single segment, 8-byte content size of 10^12) and an empty raw block
    frame = (0xFD2FB528).to_bytes(4, "little") + b"\xe0" + (10**12).to_bytes(8, "little") + b"\x01\x00\x00"
    _forge(f, frame)
    r = helpers.mkd("teacher-cache", "--verify", str(cache), check=False)
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "shard_000000/logp.npy.zst decompresses past its recorded size" in errors[0]
    assert "out of memory" not in r.stderr


@pytest.mark.parametrize("entry,why", [
    ({"run_dir": "/x", "reading": 10**12, "safe": 10**12}, r"says its run checkpointed at shard 1000000000000, "
                                                           r"but only the shards below 3 are written"),
    ({"run_dir": "/x", "reading": 1, "safe": "abc"}, r"has 'safe': \"abc\", not an integer"),
    ({"run_dir": "/x", "reading": 1, "safe": -4}, r"has 'safe': -4 and 'reading': 1, not 0 <= safe"),
    ([1, 2], r"is not a JSON object"),
])
def test_a_hand_made_reader_entry_deletes_nothing(cache, entry, why):
    _edit_manifest(cache, window=3, readers=1)
    (cache / READERS).mkdir()
    (cache / READERS / "forged-r0.json").write_text(json.dumps(entry))
    window = Window(cache, 3, readers=1, wait_s=5, deletes=True)
    with _within(20), pytest.raises(ConfigError, match=f"readers/forged-r0.json {why}.*delete it") as err:
        window.wait_to_write(SHARDS, poll_s=0.01)
    assert "\n" not in str(err.value)
    assert all(shard_dir(cache, j).is_dir() for j in range(SHARDS))  # nothing deleted for it


@pytest.mark.parametrize("wait", [math.nan, math.inf, 0.0, -1.0])
def test_every_reader_wait_is_finite_and_positive(tmp_path, wait):
    with pytest.raises(ConfigError, match=r"--reader-wait must be a finite number of seconds above 0"):
        Window(tmp_path, 3, 1, wait_s=wait, deletes=True)


@pytest.mark.parametrize("wait", [math.nan, math.inf, -1.0])
def test_every_student_wait_is_finite(tmp_path, wait):
    from megatron_kd.distill.cache import wait_for

    with _within(20), pytest.raises(ConfigError, match=r"teacher.cache_wait_s must be a finite number"):
        wait_for(tmp_path / "never", wait)


def test_reader_wait_nan_on_the_command_line(tmp_path):
    r = helpers.mkd("teacher-cache", "kd/cpu-tiny-to-small", "--out", str(tmp_path / "c"), "--window", "4",
                    "--reader-wait", "nan", check=False)
    assert r.returncode == 2 and "finite --reader-wait > 0" in r.stderr and "--reader-wait nan" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "c").exists()


@pytest.mark.parametrize("zstd", [0, 3])
def test_a_full_disk_names_the_file_and_leaves_no_partial_shard(tmp_path, zstd):
    from megatron_kd.cli.main import describe

    with helpers.small_disk(tmp_path / "small", "256k") as disk:
        root = disk / "c"
        root.mkdir()
        g = torch.Generator().manual_seed(0)
        rows = {"logp": torch.randn(ROWS * 64, SEQ, 256, generator=g), "label_logp": torch.zeros(ROWS * 64, SEQ),
                "entropy": torch.zeros(ROWS * 64, SEQ), "other_logp": torch.zeros(ROWS * 64, SEQ),
                "ids": torch.zeros(ROWS * 64, SEQ, 256, dtype=torch.int32)}
        with pytest.raises(OSError) as err:
            _write_shard(root, 0, rows, Encoding.for_vocab(VOCAB, "fp32", zstd=zstd))
        assert describe(err.value) is not None, repr(err.value)
        line, code = describe(err.value)
        assert code == 4 and line.startswith("no space left on the device: ") and str(root) in line, line
        assert [p.name for p in root.iterdir()] == []  # no shard_000000.partial holding the space
        shutil.rmtree(root)


def test_the_pre_launch_check_counts_shards_without_looping_over_the_claim(cache, tmp_path):
    """check_run (before any process starts) on a manifest of 10^12 shards and on a window
    state of -10^12: one line each, at once, in bounded memory (they looped with memory growing)."""
    from megatron_kd.config.loader import load_config
    from megatron_kd.distill.cache import check_run, fingerprint

    cfg = load_config("train/tiny-mock", [f"run.dir={tmp_path / 'run'}", f"model.vocab_size={VOCAB}",
                                          f"train.seq_length={SEQ}"])
    cfg.teacher.cache = str(cache)
    _edit_manifest(cache, fingerprint=fingerprint(cfg, K, None, None, dtype="fp16"))
    cfg.kd.kind, cfg.kd.top_k, cfg.kd.temperature = "forward_kl", K, 1.0
    check_run(cfg, SHARDS * ROWS, None, None)  # the cache as written fits
    _edit_manifest(cache, num_shards=10**12, num_samples=10**12 * ROWS)
    tracemalloc.start()
    try:
        with _within(20), pytest.raises(ConfigError, match=r"shard_000003 is missing or truncated \(999999999997 of"):
            check_run(cfg, SHARDS * ROWS, None, None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    (cache / WINDOW_FILE).write_text(json.dumps({"window": 3, "readers": 1, "deleted_below": -10**12}))
    with _within(20), pytest.raises(ConfigError, match=r"'deleted_below': -1000000000000, not a shard count"):
        check_run(cfg, SHARDS * ROWS, None, None)


# --- a manifest's window keys, --reader-wait's ceiling, --sample's name, a full disk under the index ---

@pytest.mark.parametrize("edit, said", [({"window": "abc", "readers": 1}, "'window': \"abc\""),
                                        ({"window": -1, "readers": 1}, "'window': -1"),
                                        ({"window": 1e30, "readers": 1}, "'window': 1e+30"),
                                        ({"window": 10**30, "readers": 1}, "'window': 1000000000000000000000000000000"),
                                        ({"window": 3, "readers": "x"}, "'readers': \"x\""),
                                        ({"window": 3}, "no 'readers'"),
                                        ({}, "no 'window'")])
def test_a_manifest_s_window_keys_are_checked_where_it_is_read(cache, tmp_path, edit, said):
    """`window` and `readers` were never checked: "abc" was a TypeError at train time, a window.json
    without them a KeyError in --verify, -1 and 1e30 passed --verify. (A window.json beside a manifest
    without them is refused by --verify; a run reads such a cache as unwindowed.)"""
    from megatron_kd.config.loader import load_config
    from megatron_kd.distill.cache import check_run, fingerprint

    (cache / WINDOW_FILE).write_text(json.dumps({"window": 3, "readers": 1, "deleted_below": 1}))
    shutil.rmtree(shard_dir(cache, 0))
    cfg = load_config("train/tiny-mock", [f"run.dir={tmp_path / 'run'}", f"model.vocab_size={VOCAB}",
                                          f"train.seq_length={SEQ}"])
    cfg.teacher.cache = str(cache)
    cfg.kd.kind, cfg.kd.top_k, cfg.kd.temperature = "forward_kl", K, 1.0
    _edit_manifest(cache, fingerprint=fingerprint(cfg, K, None, None, dtype="fp16"), **edit)
    reads = [lambda: verify_cache(cache)] + ([lambda: check_run(cfg, SHARDS * ROWS, None, None)] if edit else [])
    for read in reads:
        with pytest.raises(ConfigError, match="the cache is damaged, rebuild it") as err:
            read()
        assert said in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_missing_window_key_on_the_command_line_is_one_line(cache, capsys):
    (cache / WINDOW_FILE).write_text(json.dumps({"window": 3, "readers": 1, "deleted_below": 1}))
    shutil.rmtree(shard_dir(cache, 0))
    rc, _, err = helpers.mkd_in_process(capsys, "teacher-cache", "--verify", cache)
    assert rc == 2 and "no 'window'" in err and "rebuild it" in err and "Traceback" not in err, err


def test_a_reader_wait_past_30_days_is_refused(tmp_path, capsys):
    """--reader-wait 1e300 waited forever (as teacher.cache_wait_s, capped at 30 days)."""
    with pytest.raises(ConfigError, match=r"--reader-wait must be .* at most 2,592,000"):
        Window(tmp_path, 3, 1, wait_s=1e300, deletes=True)
    rc, _, err = helpers.mkd_in_process(capsys, "teacher-cache", "kd/cpu-tiny-to-small", "--out", tmp_path / "c",
                                        "--window", "2", "--readers", "1", "--reader-wait", "1e300")
    assert rc == 2 and "--reader-wait must be at most 2,592,000 seconds" in err and "1e+300" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "c").exists()


@pytest.fixture
def teacher_run(mock_teacher):
    """The cache job's teacher: the session's trained tiny teacher (tests/conftest.py)."""
    return mock_teacher


@pytest.mark.slow  # trains a teacher (the module fixture)
def test_sample_above_the_vocabulary_names_sample(teacher_run, tmp_path, capsys):
    rc, _, err = helpers.mkd_in_process(capsys, "teacher-cache", "train/tiny-mock", f"teacher.checkpoint={teacher_run}",
                                        "--out", tmp_path / "c", "--sample", "1000000000")
    assert rc == 2 and "--sample 1000000000 is above the vocabulary" in err and "--top-k 1000000000" not in err, err


@pytest.mark.slow  # trains a teacher (the module fixture)
def test_a_full_disk_under_the_data_index_is_one_line_exit_4(teacher_run, tmp_path):
    """megatron-core's dataset builder wraps the failed index write in a bare Exception ("supply a
    directory to which you have write access"): 54 lines of traceback on a full disk."""
    with helpers.small_disk(tmp_path / "small", "40k") as disk:
        out = disk / "c"
        r = helpers.mkd("teacher-cache", "train/tiny-mock", f"teacher.checkpoint={teacher_run}", "train.steps=2",
                        "train.warmup_steps=0", "--out", out, "--top-k", "8", check=False)
        assert r.returncode == 4, r.stderr[-3000:]
        errors = [line for line in r.stderr.splitlines() if "error:" in line]
        assert "Traceback" not in r.stderr and len(errors) == 1, r.stderr[-3000:]
        assert f"no space left on the device: {out / 'data_cache'}" in errors[0], errors[0]
        assert not (out / "data_cache").exists()  # its partial index gives the space back
        shutil.rmtree(out)
