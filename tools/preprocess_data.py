#!/usr/bin/env python
"""Tokenize JSONL/text into a megatron-core IndexedDataset (Megatron-LM style flags).

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --tokenizer-model tokenizer.model --json-keys text --workers 8

Same as `mkd data preprocess`; writes PREFIX.bin, PREFIX.idx and PREFIX.meta.json.
"""

import argparse
import sys

from megatron_kd.cli.main import main


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True)
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--tokenizer-model", required=True, help="sentencepiece .model or tokenizer.json")
    p.add_argument("--json-keys", default="text")
    p.add_argument("--workers", type=int, default=2)
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse(sys.argv[1:])
    sys.exit(main(["data", "preprocess", "--input", *a.input, "--output-prefix", a.output_prefix,
                   "--tokenizer", a.tokenizer_model, "--json-key", a.json_keys,
                   "--workers", str(a.workers)]))
