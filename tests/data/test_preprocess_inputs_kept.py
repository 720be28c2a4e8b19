"""Preprocessing never replaces one of its inputs, `--overwrite` or not: an output prefix whose
files would land on an input (or on a shard-named input) is one line, and the input is intact."""

from __future__ import annotations

import json

import pytest

from megatron_kd.cli.main import main


@pytest.mark.parametrize("input_name, prefix", [("docs.meta.json", "docs"), ("docs_00003.meta.json", "docs")])
def test_output_prefix_over_an_input_is_refused(input_name, prefix, text_corpus, tmp_path, capsys):
    src = tmp_path / input_name
    src.write_text("\n".join(json.dumps({"text": f"document {i}"}) for i in range(5)) + "\n")
    before = src.read_bytes()
    extra = ["--shard-tokens", "1e6"] if "_0000" in input_name else []
    rc = main(["data", "preprocess", "--input", str(src), "--tokenizer", text_corpus["tokenizer"],
               "--output-prefix", str(tmp_path / prefix), "--overwrite", "--workers", "1", *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert rc == 2 and len(err) == 1 and "would write over the input" in err[0], err
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [input_name]
