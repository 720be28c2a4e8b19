"""Data is trained on only when it says which tokenizer made it: a prefix without its
PREFIX.meta.json (or with a record that names no tokenizer) is refused before any process
starts, unless the recipe says `data.trust_unverified: true`; a damaged record is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_kd.cli.main import main
from tests.conftest import corpus_overrides


def _copy(prefix: str, dst: Path, meta: str | None) -> str:
    for ext in (".idx", ".bin"):
        shutil.copy(prefix + ext, str(dst) + ext)
    if meta is not None:
        Path(f"{dst}.meta.json").write_text(meta)
    return str(dst)


@pytest.mark.parametrize("meta, trust, text", [
    (None, False, "has no record of the tokenizer it was made with"),
    (json.dumps({"tokens": 5}), False, "has no record of the tokenizer it was made with"),
    ("{not json", False, "is not valid JSON"),
    (None, True, None),  # trusted: passes the data checks
])
def test_data_without_tokenizer_record(meta, trust, text, text_corpus, tmp_path, capsys):
    prefix = _copy(text_corpus["train"], tmp_path / "unrecorded", meta)
    overrides = [o if not o.startswith("data.train=") else f"data.train=[{prefix}]"
                 for o in corpus_overrides(text_corpus)]
    rc = main(["train", "train/tiny-mock", f"run.dir={tmp_path / 'run'}", *overrides,
               f"data.trust_unverified={str(trust).lower()}", "train.steps=1", "train.warmup_steps=0",
               "checkpoint.load=/nonexistent/ckpt"])  # checked after the data
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert rc == 2 and len(err) == 1
    if text is None:  # the data was accepted: the next check (checkpoint.load) is what fails
        assert "checkpoint.load '/nonexistent/ckpt' does not exist" in err[0], err
    else:
        assert text in err[0], err
    assert not (tmp_path / "run").exists()
