#!/usr/bin/env python
"""Tokenize a raw corpus into a megatron-core IndexedDataset, with Megatron-LM's flags.

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --tokenizer-model tokenizer.model --json-keys text --workers 8 --append-eod

Same as `mkd data preprocess` (JSONL/text, gzip/zstd, Parquet, Arrow inputs); writes PREFIX.bin,
PREFIX.idx and PREFIX.meta.json. The EOD token is always appended (--append-eod is accepted for
compatibility); the output is byte-identical to Megatron-LM's tools/preprocess_data.py with
--append-eod, which names it PREFIX_text_document instead.
"""

import argparse
import sys

from megatron_kd.cli.main import main


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True)
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--tokenizer-model", required=True, help="sentencepiece .model or tokenizer.json")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="the field holding the text (one)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--append-eod", action="store_true", help="accepted; the EOD token is always appended")
    p.add_argument("--tokenizer-type", default=None,
                   help="accepted for Megatron-LM command lines; the kind is read from --tokenizer-model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (default: refuse)")
    a = p.parse_args(argv)
    if len(a.json_keys) != 1:
        p.error(f"one --json-keys value only (got {' '.join(a.json_keys)}); run once per field")
    return a


if __name__ == "__main__":
    a = parse(sys.argv[1:])
    sys.exit(main(["data", "preprocess", "--input", *a.input, "--output-prefix", a.output_prefix,
                   "--tokenizer", a.tokenizer_model, "--key", a.json_keys[0], "--workers", str(a.workers)]
                  + (["--overwrite"] if a.overwrite else [])))
