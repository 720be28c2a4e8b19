"""Raw-corpus inputs of `mkd data preprocess` (data/sources.py, data/preprocess.py): Parquet, Arrow,
`datasets` directories and compressed JSONL give the same .bin/.idx as the same text in JSONL;
the output is what Megatron-LM's tools/preprocess_data.py writes; bad inputs are one clear line
and leave nothing behind."""

import gzip
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from megatron_kd.data.preprocess import encode_record, preprocess
from megatron_kd.data.tokenizer import Tokenizer
from megatron_kd.errors import ConfigError
from tests.conftest import pydoc_documents

# An empty text, pre-split sentences with an empty one, whitespace and non-ASCII: the records on
# which tools most easily disagree.
ODD = ["", "  two  spaces,\nnew line  ", "Ünïcödé — “quotes” 😀\ttab", "x"]


def _docs() -> list[str]:
    return pydoc_documents()[:150] + ODD


def _bytes(prefix: Path) -> tuple[bytes, bytes]:
    return Path(f"{prefix}.bin").read_bytes(), Path(f"{prefix}.idx").read_bytes()


def _write_jsonl(path: Path, docs, opener=open) -> None:
    with opener(path, "wt") as f:
        for d in docs:
            f.write(json.dumps({"text": d, "id": len(d)}) + "\n")


def test_parquet_arrow_datasets_and_compressed_jsonl_match_plain_jsonl(text_corpus, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    docs, tok = _docs(), text_corpus["tokenizer"]
    _write_jsonl(tmp_path / "c.jsonl", docs)
    ref = preprocess([tmp_path / "c.jsonl"], tok, tmp_path / "ref", workers=2, batch_docs=7, progress=False)
    assert ref.documents == len(docs)  # the empty text is an empty document, as in Megatron-LM
    expected = _bytes(tmp_path / "ref")

    _write_jsonl(tmp_path / "c.jsonl.gz", docs, gzip.open)
    lines = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    cut = lines.index(b"\n", len(lines) // 2) + 1  # two zstd frames, as concatenated shards give
    zc = zstandard.ZstdCompressor()
    (tmp_path / "c.jsonl.zst").write_bytes(zc.compress(lines[:cut]) + zc.compress(lines[cut:]))
    table = pa.table({"id": list(range(len(docs))), "content": docs})
    (tmp_path / "pq").mkdir()
    half = len(docs) // 2
    pq.write_table(table.slice(0, half), tmp_path / "pq" / "part-000.parquet", row_group_size=17)
    pq.write_table(table.slice(half), tmp_path / "pq" / "part-001.parquet")
    ds = datasets.Dataset.from_dict({"content": docs})
    ds.save_to_disk(str(tmp_path / "hfds"), num_shards=2)
    with pa.OSFile(str(tmp_path / "c.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table, max_chunksize=40)
    # a column of pre-split sentences (lists of strings) is one document per row, as in JSONL
    sents = [["First sentence.", "", " Second one."], ["x"]]
    pq.write_table(pa.table({"text": sents}), tmp_path / "lists.parquet")
    with open(tmp_path / "lists.jsonl", "w") as f:
        f.writelines(json.dumps({"text": r}) + "\n" for r in sents)
    preprocess([tmp_path / "lists.parquet"], tok, tmp_path / "lp", progress=False)
    preprocess([tmp_path / "lists.jsonl"], tok, tmp_path / "lj", progress=False)
    assert _bytes(tmp_path / "lp") == _bytes(tmp_path / "lj")
    for name, inputs, key in (("gz", [tmp_path / "c.jsonl.gz"], "text"), ("zst", [tmp_path / "c.jsonl.zst"], "text"),
                              ("parquet", [str(tmp_path / "pq" / "*.parquet")], "content"),
                              ("datasets", [tmp_path / "hfds"], "content"),
                              ("arrow", [tmp_path / "c.arrow"], "content")):
        s = preprocess(inputs, tok, tmp_path / name, json_key=key, workers=2, batch_docs=5, progress=False)
        assert _bytes(tmp_path / name) == expected, name
        assert s.documents == len(docs) and s.tokens == ref.tokens, name
    # several inputs in order == their concatenation
    _write_jsonl(tmp_path / "a.jsonl", docs[:half])
    _write_jsonl(tmp_path / "b.jsonl", docs[half:])
    preprocess([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tok, tmp_path / "two", workers=1, progress=False)
    assert _bytes(tmp_path / "two") == expected


def test_shard_tokens_splits_the_output_and_writes_the_blend(text_corpus, tmp_path):
    import yaml
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    docs, tok = _docs(), text_corpus["tokenizer"]
    _write_jsonl(tmp_path / "c.jsonl", docs)
    whole = preprocess([tmp_path / "c.jsonl"], tok, tmp_path / "whole", progress=False)
    s = preprocess([tmp_path / "c.jsonl"], tok, tmp_path / "sh", shard_tokens=whole.tokens // 3, progress=False)
    assert len(s.prefixes) >= 3 and sum(s.prefix_tokens) == whole.tokens
    blend = yaml.safe_load((tmp_path / "sh.blend.yaml").read_text())["data"]
    assert blend["train"] == s.prefixes and blend["train_weights"] == s.prefix_tokens
    joined = [d.tolist() for p in s.prefixes for d in IndexedDataset(p)]
    assert joined == [d.tolist() for d in IndexedDataset(str(tmp_path / "whole"))]
    assert all(json.loads(Path(f"{p}.meta.json").read_text())["tokens"] == n
               for p, n in zip(s.prefixes, s.prefix_tokens))
    assert not list(tmp_path.glob("*.partial*"))
    # written again with fewer shards: the extra shards of the first job are gone
    fewer = preprocess([tmp_path / "c.jsonl"], tok, tmp_path / "sh", shard_tokens=whole.tokens, progress=False)
    assert len(fewer.prefixes) == 1
    assert sorted(p.name for p in tmp_path.glob("sh_*.bin")) == ["sh_00000.bin"]


def _megatron_lm_reference(records, tokenizer_path: str, out: Path) -> None:
    """What Megatron-LM's tools/preprocess_data.py (--append-eod, document level) writes, from the
    facts of its source: the tokenizer megatron-core builds from Megatron-LM's own tokenizer flags,
    Encoder.encode's handling of sentences and EOD, one add_document per record into megatron-core's
    IndexedDatasetBuilder with DType.optimal_dtype. (The tool itself is not in the megatron-core
    wheel; test_megatron_lm_tool_itself runs it when a Megatron-LM checkout is given.)"""
    import argparse

    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer

    if not hasattr(typing, "override"):  # megatron.training is written for Python >= 3.12
        typing.override = lambda f: f
    from megatron.training.arguments import _add_tokenizer_args

    args = _add_tokenizer_args(argparse.ArgumentParser()).parse_args(
        ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer_path])
    args.rank, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size = 1, 128, 1
    args.vocab_extra_ids = 0
    tokenizer = build_tokenizer(args)
    builder = IndexedDatasetBuilder(f"{out}.bin", dtype=DType.optimal_dtype(tokenizer.vocab_size))
    for text in records:
        doc_ids, lens = [], []
        for sentence in ([text] if isinstance(text, str) else text):
            ids = tokenizer.tokenize(sentence)
            if len(ids) > 0:
                doc_ids.extend(ids)
                lens.append(len(ids))
        if doc_ids:
            doc_ids.append(tokenizer.eod)
            lens[-1] += 1
        builder.add_document(doc_ids, lens)
    builder.finalize(f"{out}.idx")


def test_output_matches_megatron_lm_preprocess_data(text_corpus, tmp_path):
    records = _docs() + [["First sentence.", "", " Second one."], []]
    with open(tmp_path / "c.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps({"text": r}) + "\n")
    preprocess([tmp_path / "c.jsonl"], text_corpus["tokenizer"], tmp_path / "ours", progress=False)
    _megatron_lm_reference(records, text_corpus["tokenizer"], tmp_path / "mlm")
    assert _bytes(tmp_path / "ours") == _bytes(tmp_path / "mlm")
    tok = Tokenizer(text_corpus["tokenizer"])
    ids, lens = encode_record(tok, ["a b", "", "c"])
    assert lens == [len(tok.encode("a b")), len(tok.encode("c")) + 1] and ids[-1] == tok.eod


@pytest.mark.skipif(not os.environ.get("MKD_MEGATRON_LM"), reason="set MKD_MEGATRON_LM to a Megatron-LM checkout")
def test_megatron_lm_tool_itself(text_corpus, tmp_path):
    """Megatron-LM's own tools/preprocess_data.py on the same JSONL (with the megatron-core of this
    environment): byte-identical output. Run here with the NVIDIA/Megatron-LM main branch."""
    docs = _docs()
    _write_jsonl(tmp_path / "c.jsonl", docs)
    preprocess([tmp_path / "c.jsonl"], text_corpus["tokenizer"], tmp_path / "ours", progress=False)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import typing\nif not hasattr(typing, 'override'):\n"
                                           "    typing.override = lambda f: f\n")
    tool = Path(os.environ["MKD_MEGATRON_LM"]) / "tools" / "preprocess_data.py"
    r = subprocess.run([sys.executable, str(tool), "--input", str(tmp_path / "c.jsonl"), "--output-prefix",
                        str(tmp_path / "mlm"), "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                        text_corpus["tokenizer"], "--workers", "2", "--append-eod"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(shim)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert _bytes(tmp_path / "ours") == _bytes(tmp_path / "mlm_text_document")


def test_bad_inputs_are_one_line_and_leave_nothing(text_corpus, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = text_corpus["tokenizer"]
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "good.parquet")
    pq.write_table(pa.table({"content": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    (tmp_path / "corrupt.parquet").write_bytes((tmp_path / "good.parquet").read_bytes()[:-40])
    (tmp_path / "zero.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl.gz").write_bytes(gzip.compress(b"\n\n"))
    text = "".join(json.dumps({"text": d}) + "\n" for d in _docs()).encode()
    (tmp_path / "trunc.jsonl.gz").write_bytes(gzip.compress(text)[:3000])
    (tmp_path / "null.jsonl").write_text('{"text": "ok"}\n{"text": null}\n')
    import zstandard

    z = zstandard.ZstdCompressor().compress(text)
    (tmp_path / "trunc.jsonl.zst").write_bytes(z[:-50])
    pq.write_table(pa.table({"content": ["a", None, "b"]}), tmp_path / "nullrow.parquet")
    (tmp_path / "doc.pdf").write_bytes(b"%PDF")
    cases = [
        ([tmp_path / "good.parquet"], "text", r"good.parquet' has no column 'text' \(columns: content\); pass --key"),
        ([tmp_path / "corrupt.parquet"], "content", r"corrupt.parquet' is not a readable Parquet file"),
        ([tmp_path / "good.parquet", tmp_path / "empty.parquet"], "content", r"empty.parquet' has no rows: an empty"),
        ([str(tmp_path / "nothing-*.parquet")], "content", r"matches no file"),
        ([tmp_path / "zero.jsonl"], "text", r"zero.jsonl' is empty \(0 bytes\)"),
        ([tmp_path / "blank.jsonl.gz"], "text", r"blank.jsonl.gz' holds no documents: an empty shard"),
        ([tmp_path / "trunc.jsonl.gz"], "text", r"trunc.jsonl.gz: cannot read past line \d+ .*corrupt or truncated"),
        ([tmp_path / "null.jsonl"], "text", r"null.jsonl:2: 'text' is null; remove or fill that record"),
        ([tmp_path / "trunc.jsonl.zst"], "text", r"trunc.jsonl.zst: cannot read past line \d+ \(the zstd stream ends "
                                                 r"inside a frame\); the file is corrupt or truncated"),
        ([tmp_path / "nullrow.parquet"], "content", r"nullrow.parquet row 1: 'content' is null"),
        ([tmp_path / "doc.pdf"], "text", r"doc.pdf' has an unknown type"),
        ([tmp_path / "missing.jsonl"], "text", r"missing.jsonl' not found"),
    ]
    for inputs, key, message in cases:
        with pytest.raises(ConfigError, match=message):
            preprocess(inputs, tok, tmp_path / "out", json_key=key, workers=2, progress=False)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == [], inputs


def test_cli_refuses_to_overwrite_and_reports_progress(text_corpus, tmp_path, capsys):
    from megatron_kd.cli.main import main

    _write_jsonl(tmp_path / "c.jsonl", _docs())
    argv = ["data", "preprocess", "--input", str(tmp_path / "c.jsonl"), "--tokenizer", text_corpus["tokenizer"],
            "--output-prefix", str(tmp_path / "o"), "--workers", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["prefixes"] == [str(tmp_path / "o")]
    before = _bytes(tmp_path / "o")
    _write_jsonl(tmp_path / "c.jsonl", _docs()[:3])
    assert main(argv) == 2
    assert "o.bin already exists; choose another --output-prefix or pass --overwrite" in capsys.readouterr().err
    assert _bytes(tmp_path / "o") == before  # nothing overwritten
    assert main(argv + ["--overwrite"]) == 0 and _bytes(tmp_path / "o") != before
    assert main(argv[:-2] + ["--workers", "0", "--overwrite"]) == 2
