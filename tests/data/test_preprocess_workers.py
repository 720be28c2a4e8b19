"""`mkd data preprocess --workers N` starts no more tokenizer processes than the cores this
process may use, nor than the input has batches of documents, and says so in one line."""

from __future__ import annotations

import json
import os

import pytest

from megatron_kd.cli.main import main


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from megatron_kd.data.tokenizer import train_sentencepiece
    from tests.conftest import pydoc_documents

    root = tmp_path_factory.mktemp("tok")
    (root / "tok.txt").write_text("\n".join(pydoc_documents()[:40]))
    return train_sentencepiece([root / "tok.txt"], root, 512)


@pytest.mark.parametrize("workers,lines,cores,expected", [
    (8, 3, 16, "--workers 8: the input has 1 batch(es) of documents; using 1 worker(s)"),  # 3 lines: one batch
    (4, 300, 1, "--workers 4 is above this machine's 1 cores; using 1"),
])
def test_workers_capped(workers, lines, cores, expected, tokenizer, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"line {i} of a tiny input"}) + "\n" for i in range(lines)))
    assert main(["data", "preprocess", "--input", str(src), "--tokenizer", str(tokenizer),
                 "--output-prefix", str(tmp_path / "out"), "--workers", str(workers)]) == 0
    out, err = capsys.readouterr()
    assert sum(expected in line for line in err.splitlines()) == 1, err
    assert f'"documents": {lines}' in out and "Traceback" not in out + err
