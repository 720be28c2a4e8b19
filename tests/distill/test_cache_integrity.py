"""A teacher cache is read at train time only as it was written: each shard's files checked
against their CRC-32 the first time the shard is mapped, their shapes against the manifest,
the cached ids against the vocabulary, and the manifest's counts against each other. The
cache is written by the real shard writer (training/teacher_cache.py) from real teacher rows."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_kd.distill.cache import COMPLETE, MANIFEST, TeacherCache, shard_dir, teacher_rows
from megatron_kd.distill.cache_encoding import Encoding
from megatron_kd.errors import ConfigError
from megatron_kd.training.teacher_cache import _write_shard, verify_cache

VOCAB, SEQ, TOP_K, ROWS, SAMPLES = 50, 6, 4, 3, 7


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache") / "cache"
    root.mkdir()
    torch.manual_seed(0)
    num_shards = math.ceil(SAMPLES / ROWS)
    for j in range(num_shards):
        b = min(ROWS, SAMPLES - j * ROWS)
        logits = torch.randn(SEQ, b, VOCAB) * 3
        labels = torch.randint(0, VOCAB, (SEQ, b))
        _write_shard(root, j, teacher_rows(logits, labels, VOCAB, TOP_K, None), Encoding())
    manifest = {"fingerprint": {"top_k": TOP_K, "vocab_size": VOCAB}, "num_samples": SAMPLES,
                "shard_rows": ROWS, "num_shards": num_shards, "seq_length": SEQ, "teacher_padded_vocab": VOCAB}
    # format 1 (no "encoding"): fp32 values, int32 ids, as caches written before encodings
    (root / MANIFEST).write_text(json.dumps(manifest))
    (root / COMPLETE).write_text("")
    return root


def _copy(good: Path, tmp: Path) -> Path:
    dst = tmp / "cache"
    shutil.copytree(good, dst)
    return dst


def _permute_logp(root: Path) -> None:
    f = shard_dir(root, 1) / "logp.npy"
    a = np.load(f)
    np.save(f, a[::-1].copy())  # same shape and size, other rows


def _ids_to(value: int):
    def edit(root: Path) -> None:
        f = shard_dir(root, 0) / "ids.npy"
        a = np.load(f)
        a[0, 0, 0] = value
        np.save(f, a)
        # a forger re-writes the shard index too: only the range check can catch it
        index = json.loads((shard_dir(root, 0) / "index.json").read_text())
        from megatron_kd.checkpoint.refs import file_checksum

        index["ids.npy"] = {"bytes": f.stat().st_size, "crc32": file_checksum(f)}
        (shard_dir(root, 0) / "index.json").write_text(json.dumps(index))
    return edit


def _manifest(**edit):
    def apply(root: Path) -> None:
        m = json.loads((root / MANIFEST).read_text())
        m.update(edit)
        (root / MANIFEST).write_text(json.dumps(m))
    return apply


CASES = {
    "logp_permuted_in_place": (_permute_logp, 1, "does not match its checksum"),
    "id_above_vocabulary": (_ids_to(2**31 - 1), 0, "token ids outside [0, 50)"),
    "id_negative": (_ids_to(-5), 0, "token ids outside [0, 50)"),
    "shard_rows_edited": (_manifest(shard_rows=4), None, "is inconsistent"),
    "shard_rows_and_shards_edited": (_manifest(shard_rows=4, num_shards=2), 0, "the manifest says"),
    "num_samples_not_an_int": (_manifest(num_samples="7"), None, "not an integer >= 1"),
    "top_k_above_vocabulary": (_manifest(fingerprint={"top_k": 99, "vocab_size": VOCAB}), None,
                               "no valid fingerprint"),
    "unknown_format": (_manifest(format=3), None, "which this version does not read"),
    "unknown_value_encoding": (_manifest(format=2, encoding={"values": "fp8", "id_bits": 6, "zstd": 0}), None,
                               "unknown cache value encoding 'fp8'"),
    # the manifest says 16-bit values, the files hold fp32: the shapes/dtypes check names both
    "encoding_edited": (_manifest(format=2, encoding={"values": "fp16", "id_bits": 32, "zstd": 0}), 0,
                        "the manifest says float16"),
}


def test_good_cache_reads_and_verifies(good_cache):
    cache = TeacherCache(good_cache)
    rows = cache.rows(torch.arange(SAMPLES))
    assert rows["ids"].shape == (SAMPLES, SEQ, TOP_K) and int(rows["ids"].max()) < VOCAB
    assert "all verified" in verify_cache(good_cache)


@pytest.mark.parametrize("case", sorted(CASES))
def test_altered_cache_is_refused_at_train_time(case, good_cache, tmp_path):
    edit, shard, text = CASES[case]
    root = _copy(good_cache, tmp_path)
    edit(root)
    with pytest.raises(ConfigError, match=text.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        cache = TeacherCache(root)  # the manifest is checked on opening
        cache.rows(torch.tensor([shard * ROWS]))  # a shard on first use
    with pytest.raises(ConfigError):  # and `--verify` says the same
        verify_cache(root)


def test_each_shard_is_checked_once(good_cache, tmp_path, monkeypatch):
    import megatron_kd.distill.cache as cache_module

    calls = []
    real = cache_module.check_shard
    monkeypatch.setattr(cache_module, "check_shard", lambda *a: calls.append(a[2]) or real(*a))
    monkeypatch.setattr(cache_module, "OPEN_SHARDS", 1)  # maps evicted and re-opened
    cache = TeacherCache(good_cache)
    for i in [0, 3, 0, 6, 3, 0]:
        cache.rows(torch.tensor([i]))
    assert sorted(calls) == [0, 1, 2]
