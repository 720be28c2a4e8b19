#!/usr/bin/env python
"""Convert checkpoints between Hugging Face and megatron-core (same as `mkd convert`).

    python tools/convert_checkpoint.py hf-to-mcore /models/Llama-3.2-1B /ckpts/llama-1b
    python tools/convert_checkpoint.py mcore-to-hf runs/student /export/student-hf
"""

import sys

from megatron_kd.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
