"""A teacher cache records its data by content (data/identity.py), not by path and size: the same
documents tokenized again in another order (same path, same `.bin` size) are other rows, and a
run on them from the old cache trained silently against the old data's teacher. Refused before
the run starts in one line naming both identities; a cache that recorded sizes only (written
before) is refused with "rebuild". Real tokenized data, the real pre-launch check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from megatron_kd.data.identity import prefix_identity
from megatron_kd.distill.cache import COMPLETE, MANIFEST, check_run, fingerprint, teacher_rows
from megatron_kd.distill.cache_encoding import FORMAT, Encoding
from megatron_kd.errors import ConfigError
from megatron_kd.training.teacher_cache import _write_shard, check_out
from tests.data.test_data_identity import _cfg, retokenized  # noqa: F401 (a fixture)

VOCAB, SEQ, K, ROWS = 512, 32, 4, 4


@pytest.fixture
def run(text_corpus, retokenized, tmp_path):  # noqa: F811
    """A KD config on the retokenized prefix and a complete cache made for it."""
    prefix, again = retokenized
    cfg = _cfg(text_corpus, prefix, tmp_path / "run")
    cfg.kd.kind, cfg.kd.top_k, cfg.kd.temperature = "forward_kl", K, 1.0
    root = tmp_path / "cache"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    enc = Encoding.for_vocab(VOCAB)
    _write_shard(root, 0, teacher_rows(torch.randn(SEQ, ROWS, VOCAB, generator=g),
                                       torch.randint(0, VOCAB, (SEQ, ROWS), generator=g), VOCAB, K, None), enc)
    m = {"fingerprint": fingerprint(cfg, K, None, None), "num_samples": ROWS, "shard_rows": ROWS,
         "num_shards": 1, "seq_length": SEQ, "format": FORMAT, "encoding": enc.to_manifest()}
    (root / MANIFEST).write_text(json.dumps(m))
    (root / COMPLETE).write_text("")
    cfg.teacher.cache = str(root)
    return cfg, prefix, again


def test_a_cache_of_data_tokenized_again_is_refused_naming_both_identities(run):
    cfg, prefix, again = run
    check_run(cfg, ROWS, None, None)  # the data it was made from: accepted
    before = prefix_identity(prefix)
    again()  # the same documents in another order: same path, same .bin size
    with pytest.raises(ConfigError) as err:
        check_run(cfg, ROWS, None, None)
    line = str(err.value)
    assert "was made from other data" in line and str(prefix.resolve()) in line and "\n" not in line
    assert before[:19] in line and prefix_identity(prefix)[:19] in line and "rebuild the cache" in line


def test_a_cache_that_recorded_sizes_only_is_refused_with_rebuild(run):
    cfg, prefix, _ = run
    manifest = Path(cfg.teacher.cache) / MANIFEST
    m = json.loads(manifest.read_text())
    for entry in m["fingerprint"]["data"]["train"]:  # as caches were written before content identities
        entry["bin_bytes"] = 123
        del entry["content"]
    manifest.write_text(json.dumps(m))
    with pytest.raises(ConfigError, match=r"records its data by size only .* rebuild the cache"):
        check_run(cfg, ROWS, None, None)


def test_another_data_seed_is_still_refused(run):
    cfg, _, _ = run
    cfg.data.seed = 4321
    with pytest.raises(ConfigError, match=r"was made for another run: data_seed differ"):
        check_run(cfg, ROWS, None, None)


def test_a_moved_project_reads_its_cache_and_a_reordered_one_does_not(run, tmp_path):
    """The data's bytes in the same order and the teacher's checksum, wherever they lie: a project
    copied to another directory reads the cache it made (its teacher at another path too)."""
    cfg, prefix, _ = run
    teacher_state = {"step": 5, "state_crc": "crc32:0badf00d"}
    manifest = Path(cfg.teacher.cache) / MANIFEST
    m = json.loads(manifest.read_text())
    m["fingerprint"] = fingerprint(cfg, K, tmp_path / "teacher", teacher_state)
    manifest.write_text(json.dumps(m))
    moved = tmp_path / "moved" / "train"
    moved.parent.mkdir()
    for suffix in (".bin", ".idx"):
        shutil.copy(prefix.with_suffix(suffix), moved.with_suffix(suffix))
    cfg.data.train = [str(moved)]
    check_run(cfg, ROWS, tmp_path / "moved" / "teacher", teacher_state)
    with pytest.raises(ConfigError, match=r"made for another run: teacher.state_crc differ"):
        check_run(cfg, ROWS, tmp_path / "moved" / "teacher", {**teacher_state, "state_crc": "crc32:00000000"})
    cfg.data.train = [str(moved), str(prefix)]  # two prefixes where it had one
    with pytest.raises(ConfigError, match=r"was made from other data: 2 training prefix\(es\), where there were 1"):
        check_run(cfg, ROWS, tmp_path / "moved" / "teacher", teacher_state)


def test_a_blend_in_another_order_is_refused_as_such(run, retokenized, tmp_path):  # noqa: F811
    """A cache made from prefixes [a, b] does not serve [b, a]: the order decides the samples."""
    cfg, prefix, _ = run
    other = tmp_path / "other" / "train"
    other.parent.mkdir()
    for suffix in (".bin", ".idx"):
        shutil.copy(prefix.with_suffix(suffix), other.with_suffix(suffix))
    with open(other.with_suffix(".bin"), "r+b") as f:  # other content, same size
        f.write(b"\x01\x02\x03\x04")
    cfg.data.train = [str(prefix), str(other)]
    manifest = Path(cfg.teacher.cache) / MANIFEST
    m = json.loads(manifest.read_text())
    m["fingerprint"] = fingerprint(cfg, K, None, None)
    manifest.write_text(json.dumps(m))
    check_run(cfg, ROWS, None, None)
    cfg.data.train = [str(other), str(prefix)]
    with pytest.raises(ConfigError, match="the same prefixes' data in another order"):
        check_run(cfg, ROWS, None, None)


def test_a_moved_project_continues_its_cache_job(run, tmp_path):
    """`mkd teacher-cache --out` on the cache a moved project made (half-written or not)
    continues it: the job's check compares the same fingerprint fields as a reader's."""
    cfg, prefix, _ = run
    root = Path(cfg.teacher.cache)
    have = json.loads((root / MANIFEST).read_text())
    moved = tmp_path / "moved" / "train"
    moved.parent.mkdir()
    for suffix in (".bin", ".idx"):
        shutil.copy(prefix.with_suffix(suffix), moved.with_suffix(suffix))
    cfg.data.train = [str(moved)]
    check_out(root, dict(have, fingerprint=fingerprint(cfg, K, None, None)))
    cfg.data.seed = 4321
    with pytest.raises(ConfigError, match=r"holds a teacher cache of another run \(data_seed differ\)"):
        check_out(root, dict(have, fingerprint=fingerprint(cfg, K, None, None)))
