"""Tokenizers and preprocessing into megatron-core IndexedDatasets."""

import json
import subprocess
import sys

import numpy as np
import pytest

from megatron_kd.data.preprocess import preprocess, progress_line, read_meta
from megatron_kd.data.tokenizer import Tokenizer
from megatron_kd.errors import ConfigError
from tests.conftest import pydoc_documents
from tests.distributed import REPO
from tests.helpers import mkd


def test_round_trip_with_several_workers(text_corpus, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tok = Tokenizer(text_corpus["tokenizer"])
    docs = [json.loads(line)["text"] for line in open(text_corpus["dir"] / "valid.jsonl")]
    # Small batches so all 3 workers get work; order must be preserved anyway.
    s = preprocess([text_corpus["dir"] / "valid.jsonl"], tok.path, tmp_path / "v", workers=3,
                   batch_docs=2, progress=False)
    ds = IndexedDataset(str(tmp_path / "v"))
    assert len(ds) == len(docs) == s.documents
    total = 0
    for i, d in enumerate(docs):
        expected = tok.encode(d) + [tok.eod]
        assert ds[i].tolist() == expected
        total += len(expected)
    assert s.tokens == total and ds[0].dtype == np.uint16  # vocab 512 fits 16 bits
    meta = read_meta(tmp_path / "v")
    assert meta["tokenizer_sha256"] == tok.sha256 and meta["documents"] == len(docs)
    assert tok.decode(ds[0].tolist()[:-1]) == docs[0]  # byte-exact: identity normalisation


def test_txt_input_and_hf_tokenizer_json(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers, trainers

    docs = pydoc_documents()[:40]
    (tmp_path / "a.txt").write_text("\n".join(d.replace("\n", " ") for d in docs))
    hf = HF(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel()
    hf.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|end_of_text|>"]))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer(tmp_path / "tokenizer.json")
    assert tok.kind == "hf" and tok.eod == 1
    s = preprocess([tmp_path / "a.txt"], tok.path, tmp_path / "hf", workers=2, progress=False)
    ds = IndexedDataset(str(tmp_path / "hf"))
    assert s.documents == len(docs) == len(ds)
    assert ds[3].tolist() == tok.encode(docs[3].replace("\n", " ")) + [1]


def test_bad_inputs(tmp_path, text_corpus):
    with pytest.raises(ConfigError, match="tokenizer '.*nope.model' not found"):
        Tokenizer(tmp_path / "nope.model")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: no 'text' field; pass --key"):
        preprocess([tmp_path / "bad.jsonl"], text_corpus["tokenizer"], tmp_path / "o", progress=False)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ConfigError, match="empty.jsonl. holds no documents"):
        preprocess([tmp_path / "empty.jsonl"], text_corpus["tokenizer"], tmp_path / "e", progress=False)
    assert not (tmp_path / "e.bin").exists() and not (tmp_path / "o.idx").exists()


@pytest.mark.slow
def test_cli_train_tokenizer_and_preprocess(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(pydoc_documents()[:60]))
    r = mkd("data", "train-tokenizer", "--input", str(tmp_path / "t.txt"), "--out",
            str(tmp_path / "tok"), "--vocab-size", "600", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "600 pieces, eod id 3" in r.stdout
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in pydoc_documents()[:20]))
    r = mkd("data", "preprocess", "--input", str(tmp_path / "d.jsonl"), "--tokenizer",
            str(tmp_path / "tok" / "tokenizer.model"), "--output-prefix", str(tmp_path / "d"),
            "--json-key", "body", "--workers", "2", timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["documents"] == 20
    r = subprocess.run([sys.executable, "tools/preprocess_data.py", "--input", str(tmp_path / "d.jsonl"),
                        "--output-prefix", str(tmp_path / "d2"), "--tokenizer-model",
                        str(tmp_path / "tok" / "tokenizer.model"), "--json-keys", "body"],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d2.bin").read_bytes() == (tmp_path / "d.bin").read_bytes()


def test_progress_line_arithmetic():
    # a quarter of the input in 30 s: 90 s left; 1.2M tokens in 30 s: 40,000 tokens/s
    assert progress_line(1234, 1_200_000, 30.0, 0.25) == \
        "1,234 documents | 1,200,000 tokens | 40,000 tokens/s | 25% | ETA 0:01:30"
    assert progress_line(5, 10, 2.0, 0.0).endswith("| 0% | ETA ?")
    assert progress_line(10, 10, 4000.0, 0.5).endswith("ETA 1:06:40")
