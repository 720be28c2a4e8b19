#!/usr/bin/env python
"""Train a byte-fallback sentencepiece tokenizer (same as `mkd data train-tokenizer`).

    python tools/train_tokenizer.py --input a.txt b.txt --out tok/ --vocab-size 32000
"""

import sys

from megatron_kd.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["data", "train-tokenizer", *sys.argv[1:]]))
