"""The bad-input catalogues' shared inputs: built once per test session for
tests/cli/test_bad_input.py and tests/cli/test_bad_values_and_damaged_files.py."""

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import corpus_overrides, pydoc_documents
from tests.helpers import copy_prefix, mkd, tree_digest


@pytest.fixture(scope="session")
def catalogue_inputs(text_corpus, tmp_path_factory) -> dict:
    """Good inputs (a corpus, a trained teacher) and the broken ones the bad-input catalogue
    (test_bad_input.py) feeds mkd; test_bad_values_and_damaged_files.py adds its own beside them.
    Every case must leave them as they are (each module checks the teacher's digest)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_kd.data.preprocess import preprocess
    from megatron_kd.data.tokenizer import train_sentencepiece

    tmp = tmp_path_factory.mktemp("bad_input")
    a = {"tmp": str(tmp), "tokenizer": text_corpus["tokenizer"], "train": text_corpus["train"],
         "valid": text_corpus["valid"]}
    # Another tokenizer with the same vocabulary size (different pieces), and data made with it.
    other = tmp / "other"
    other.mkdir()
    (other / "text.txt").write_text("\n".join(" ".join(w[::-1] for w in d.split()) for d in pydoc_documents()))
    a["other_tokenizer"] = str(train_sentencepiece([other / "text.txt"], other, 512))
    preprocess([Path(text_corpus["dir"]) / "valid.jsonl"], a["other_tokenizer"], other / "valid",
               workers=1, progress=False)
    a["other_train"] = str(other / "valid")
    # Broken data: an empty dataset, a corrupt index, a truncated .bin.
    builder = IndexedDatasetBuilder(str(tmp / "empty.bin"))
    builder.finalize(str(tmp / "empty.idx"))
    a["empty"] = str(tmp / "empty")
    a["corrupt_idx"] = copy_prefix(text_corpus["train"], tmp / "corrupt")
    with open(a["corrupt_idx"] + ".idx", "r+b") as f:
        f.write(b"\0" * 16)
    a["truncated_bin"] = copy_prefix(text_corpus["train"], tmp / "truncated")
    size = os.path.getsize(a["truncated_bin"] + ".bin")
    os.truncate(a["truncated_bin"] + ".bin", size // 2)
    # A trained teacher (3 steps) and a truncated copy of its checkpoint.
    teacher = tmp / "teacher"
    r = mkd("train", "train/tiny-mock", *corpus_overrides(text_corpus), f"run.dir={teacher}", "train.steps=3")
    assert r.returncode == 0, r.stderr[-3000:]
    a["teacher"] = str(teacher)
    ckpt = next(p for p in (teacher / "checkpoints").iterdir() if p.is_dir())
    shutil.copytree(ckpt, tmp / "truncated_ckpt")
    biggest = max((p for p in (tmp / "truncated_ckpt").rglob("*.distcp")), key=lambda p: p.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 3)
    a["truncated_ckpt"] = str(tmp / "truncated_ckpt")
    # Files for the other commands.
    (tmp / "gpt2").mkdir()
    (tmp / "gpt2" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"],
                                                          "model_type": "gpt2"}))
    a["gpt2_dir"] = str(tmp / "gpt2")
    sweep = {"name": "s", "base": "train/tiny-mock", "out": str(tmp / "sweep-out")}
    for name, extra in (("empty_sweep", {"baseline": False, "grid": {"alpha": [0.5]}}),
                        ("one_point_sweep", {"baseline": True}),
                        ("bad_sweep_key", {"baseline": True, "gird": {}})):
        (tmp / f"{name}.yaml").write_text(json.dumps({**sweep, **extra}))
        a[name] = str(tmp / f"{name}.yaml")
    (tmp / "bad.yaml").write_text("base: train/tiny-mock\ntrain:\n  steps: 3\n  lr: [1e-3,\n")
    a["bad_yaml"] = str(tmp / "bad.yaml")
    (tmp / "empty-sweep-dir").mkdir()
    a["teacher_digest"] = tree_digest(teacher)
    (tmp / "artifacts.json").write_text(json.dumps(a))
    return a
