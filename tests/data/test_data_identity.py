"""A data prefix is known by what it holds, not by its path and size (data/identity.py): the same
documents tokenized again in another order (same path, same `.bin` size, other bytes) get
another identity, so megatron-core's dataset index for the old order is not reused (it served
the old samples, or an IndexError at the first step) and a checkpoint trained on the old data is
not resumed on the new. The identity is cheap: well under a second per GB."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from megatron_kd.config.loader import load_config
from megatron_kd.data.datasets import build_datasets, index_cache_dir, load_tokenizer
from megatron_kd.data.identity import block_offsets, check_resume_data, prefix_identity, run_data_identity
from megatron_kd.data.preprocess import preprocess
from megatron_kd.errors import ConfigError
from tests.conftest import corpus_overrides, pydoc_documents


def _tokenize(docs: list[str], tokenizer: str, prefix: Path) -> None:
    source = prefix.with_suffix(".jsonl")
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    preprocess([source], Path(tokenizer), prefix, workers=1, progress=False)


@pytest.fixture
def retokenized(text_corpus, tmp_path):
    """A train prefix of 40 documents, and a function that tokenizes them again at the same path
    in the reverse order (the same tokens in all: the same `.bin` size)."""
    docs = pydoc_documents()[:40]
    prefix = tmp_path / "data" / "train"
    prefix.parent.mkdir()
    _tokenize(docs, text_corpus["tokenizer"], prefix)
    return prefix, lambda: _tokenize(docs[::-1], text_corpus["tokenizer"], prefix)


def _cfg(text_corpus, prefix: Path, run_dir: Path):
    overrides = [*corpus_overrides(text_corpus), f"data.train=[{prefix}]", "data.valid={}", "data.split=100,0,0",
                 f"run.dir={run_dir}", "train.seq_length=32"]
    return load_config("train/tiny-mock", overrides)


def test_documents_tokenized_again_in_another_order_have_another_identity(retokenized):
    prefix, again = retokenized
    size, before = Path(f"{prefix}.bin").stat().st_size, prefix_identity(prefix)
    assert prefix_identity(prefix) == before  # deterministic
    again()
    assert Path(f"{prefix}.bin").stat().st_size == size  # what the old fingerprint compared
    assert prefix_identity(prefix) != before


def test_a_sampled_block_of_the_bin_is_part_of_the_identity(tmp_path):
    prefix = tmp_path / "p"
    Path(f"{prefix}.idx").write_bytes(b"same index")
    data = np.zeros(8 << 20, dtype=np.uint8)
    Path(f"{prefix}.bin").write_bytes(data.tobytes())
    before = prefix_identity(prefix)
    data[block_offsets(data.size)[30] + 7] = 1  # inside the 31st sampled block: same size, same .idx
    Path(f"{prefix}.bin").write_bytes(data.tobytes())
    assert prefix_identity(prefix) != before


def test_the_identity_costs_well_under_a_second_per_gb(tmp_path):
    """A 2 GiB `.bin` (sparse: its blocks read as zeros) and a 40 MB `.idx` (2 M documents of
    ~500 tokens, what such a `.bin` has): the identity reads the whole `.idx` and 4 MiB of the
    `.bin`, so it costs what hashing the `.idx` does (~25 ms here)."""
    prefix = tmp_path / "big"
    with open(f"{prefix}.bin", "wb") as f:
        f.truncate(2 << 30)
    Path(f"{prefix}.idx").write_bytes(os.urandom(40 << 20))
    prefix_identity(prefix)  # the .idx into the page cache, as after preprocessing or the preflight
    start = time.perf_counter()
    prefix_identity(prefix)
    per_gb = (time.perf_counter() - start) / 2
    assert per_gb < 0.25, f"{per_gb:.3f} s per GB"


def test_data_tokenized_again_builds_a_fresh_index(text_corpus, retokenized, tmp_path):
    prefix, again = retokenized
    cfg = _cfg(text_corpus, prefix, tmp_path / "run")
    tokenizer = load_tokenizer(cfg)
    old_dir = index_cache_dir(cfg, [str(prefix)])
    build_datasets(cfg, tokenizer, 64)
    assert list(old_dir.glob("*.npy"))  # megatron-core's index files, keyed by the old data
    again()
    assert index_cache_dir(cfg, [str(prefix)]) != old_dir
    train, _ = build_datasets(cfg, tokenizer, 64)  # the same run dir: its old index is not reused
    fresh, _ = build_datasets(_cfg(text_corpus, prefix, tmp_path / "fresh"), tokenizer, 64)
    for i in range(64):
        assert np.array_equal(np.asarray(train[i]["tokens"]), np.asarray(fresh[i]["tokens"])), i


def test_a_checkpoint_is_not_resumed_on_other_data(text_corpus, retokenized, tmp_path):
    prefix, again = retokenized
    cfg = _cfg(text_corpus, prefix, tmp_path / "run")
    state = {"data": run_data_identity(cfg)}
    check_resume_data(cfg, state, "run/checkpoints/step_2")  # the same data: resumes
    check_resume_data(cfg, {}, "run/checkpoints/step_2")  # a checkpoint from before the record: resumes
    before = prefix_identity(prefix)
    again()
    with pytest.raises(ConfigError) as err:
        check_resume_data(cfg, state, "run/checkpoints/step_2")
    line = str(err.value)
    assert "\n" not in line and "trained on other data" in line and str(prefix.resolve()) in line
    assert before[:19] in line and prefix_identity(prefix)[:19] in line and "new run.dir" in line
    mock = load_config("train/tiny-mock", [f"run.dir={tmp_path / 'mock'}"])
    with pytest.raises(ConfigError, match="mock data"):
        check_resume_data(mock, state, "run/checkpoints/step_2")


def test_checkpoints_record_their_data(text_corpus, retokenized, tmp_path):
    """What the checkpointer writes into every checkpoint's state file, and that the state file's
    schema takes it."""
    from megatron_kd.checkpoint.checkpointer import Checkpointer
    from megatron_kd.checkpoint.refs import read_state, write_state

    prefix, _ = retokenized
    cfg = _cfg(text_corpus, prefix, tmp_path / "run")
    record = Checkpointer(cfg).data_identity()
    assert record == {"prefixes": {str(prefix.resolve()): prefix_identity(prefix)}}
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    write_state(ckpt, {"step": 2, "kind": "periodic", "tokens": 64, "data": record})
    assert read_state(ckpt)["data"] == record


def _train(text_corpus, prefix, run_dir, steps):
    from tests import helpers

    return helpers.mkd("train", "train/tiny-mock", *corpus_overrides(text_corpus), f"data.train=[{prefix}]",
                       "data.valid={}", "data.split=100,0,0", f"run.dir={run_dir}", f"train.steps={steps}",
                       "train.warmup_steps=0", "train.global_batch_size=4", "train.micro_batch_size=4",
                       "train.seq_length=32", "logging.eval_samples=8", "checkpoint.save_interval=2", check=False)


@pytest.mark.slow
def test_resuming_on_data_tokenized_again_is_one_line(text_corpus, retokenized, tmp_path):
    """End to end: a run checkpoints, its data is tokenized again at the same path, and the resume
    is refused in one line (it died with an IndexError in megatron-core's stale index)."""
    from megatron_kd.checkpoint.refs import latest_checkpoint, read_state

    prefix, again = retokenized
    first = _train(text_corpus, prefix, tmp_path / "run", 2)
    assert first.returncode == 0, first.stderr[-3000:]
    state = read_state(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert state["data"] == {"prefixes": {str(prefix.resolve()): prefix_identity(prefix)}}
    again()
    r = _train(text_corpus, prefix, tmp_path / "run", 4)
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert "IndexError" not in r.stderr
    assert r.returncode == 2 and len(errors) == 1 and "trained on other data" in errors[0], r.stderr[-3000:]


def test_a_project_moved_to_another_directory_resumes_on_its_data(text_corpus, retokenized, tmp_path):
    """The same bytes in the same order at another absolute path resume; other bytes there do not."""
    prefix, again = retokenized
    state = {"data": run_data_identity(_cfg(text_corpus, prefix, tmp_path / "run"))}
    moved = tmp_path / "moved" / "train"
    moved.parent.mkdir()
    for suffix in (".bin", ".idx"):
        shutil.copy(prefix.with_suffix(suffix), moved.with_suffix(suffix))
    check_resume_data(_cfg(text_corpus, moved, tmp_path / "run"), state, "run/checkpoints/step_2")
    again()
    with pytest.raises(ConfigError, match="trained on other data"):
        check_resume_data(_cfg(text_corpus, prefix, tmp_path / "run"), state, "run/checkpoints/step_2")
