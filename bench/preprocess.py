"""Tokenization throughput of `mkd data preprocess`: tokens/s at 1 and 2 workers on a corpus of a
few hundred MB built from the embedded texts (data/corpus: KJV + Shakespeare, repeated), as JSONL,
Parquet and zstd JSONL; and Megatron-LM's tools/preprocess_data.py on the same JSONL when a
Megatron-LM checkout is given (it needs the typing.override backport on Python 3.11, added here
for its process only). The largest resident set of any of a job's processes (workers included)
shows whether it streams.

    .venv/bin/mkd data corpus --out data/corpus            # once
    .venv/bin/python bench/preprocess.py --mb 300 [--megatron-lm ~/Megatron-LM] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, machine, markdown_table, write_json  # noqa: E402


def build_corpus(out: Path, mb: int) -> tuple[Path, Path, Path, int]:
    """JSONL, Parquet and .jsonl.zst copies of the embedded texts repeated to about `mb` MB."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    docs = []
    for name in ("kjv_train", "shakespeare_valid"):
        with open(REPO / "data" / "corpus" / f"{name}.jsonl") as f:
            docs += [json.loads(line)["text"] for line in f]
    one = sum(len(d.encode()) for d in docs)
    repeat = max(1, mb * 1_000_000 // one)
    jsonl = out / "corpus.jsonl"
    with open(jsonl, "w") as f:
        for r in range(repeat):
            for d in docs:
                f.write(json.dumps({"text": d, "copy": r}) + "\n")
    parquet_dir = out / "parquet"
    parquet_dir.mkdir()
    for r in range(repeat):  # one shard per copy, like a corpus of shards
        pq.write_table(pa.table({"text": docs}), parquet_dir / f"part-{r:05d}.parquet")
    zst = out / "corpus.jsonl.zst"
    with open(jsonl, "rb") as src, open(zst, "wb") as dst:
        zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
    return jsonl, parquet_dir, zst, len(docs) * repeat


# Runs one command and prints the largest resident set of any of its processes (workers included).
_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "sys.stderr.write(r.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
         "sys.exit(r.returncode)")


def run(cmd: list[str], env: dict) -> tuple[float, float]:
    """(seconds, the largest resident set of one of the job's processes in MiB) of one command."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _PEAK, *cmd], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return seconds, int(r.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=300, help="corpus size in MB of text")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--megatron-lm", default=os.environ.get("MKD_MEGATRON_LM"), help="a Megatron-LM checkout")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    tok = REPO / "data" / "corpus" / "tokenizer.model"
    if not tok.is_file():
        raise SystemExit("run `mkd data corpus --out data/corpus` first (the corpus and its tokenizer)")
    work = Path(tempfile.mkdtemp(prefix="mkd-bench-pre-"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    rows = []
    try:
        jsonl, parquet_dir, zst, n_docs = build_corpus(work, args.mb)
        mb = jsonl.stat().st_size / 1e6
        print(f"corpus: {n_docs:,} documents, {mb:.0f} MB of JSONL", flush=True)
        tokens = None
        for label, inp in (("JSONL", str(jsonl)), ("Parquet", str(parquet_dir / "*.parquet")), ("JSONL.zst", str(zst))):
            for w in args.workers:
                out = work / f"out-{label}-{w}"
                secs, peak = run([sys.executable, "-m", "megatron_kd", "data", "preprocess", "--input", inp,
                                  "--tokenizer", str(tok), "--output-prefix", str(out), "--workers", str(w)], env)
                meta = json.loads(Path(f"{out}.meta.json").read_text())
                tokens = meta["tokens"]
                rows.append({"tool": "mkd data preprocess", "input": label, "workers": w, "seconds": round(secs, 1),
                             "tokens_per_s": round(tokens / secs), "MB_per_s": round(mb / secs, 1),
                             "peak_rss_MiB": round(peak)})
                print(rows[-1], flush=True)
                for suffix in (".bin", ".idx"):
                    Path(f"{out}{suffix}").unlink()
        if args.megatron_lm:
            shim = work / "shim"
            shim.mkdir()
            (shim / "sitecustomize.py").write_text("import typing\nif not hasattr(typing, 'override'):\n"
                                                   "    typing.override = lambda f: f\n")
            for w in args.workers:
                out = work / f"mlm-{w}"
                secs, peak = run([sys.executable, str(Path(args.megatron_lm) / "tools" / "preprocess_data.py"),
                                  "--input", str(jsonl), "--output-prefix", str(out), "--tokenizer-type",
                                  "SentencePieceTokenizer", "--tokenizer-model", str(tok), "--workers", str(w),
                                  "--append-eod", "--log-interval", "100000"], dict(env, PYTHONPATH=str(shim)))
                rows.append({"tool": "Megatron-LM tools/preprocess_data.py", "input": "JSONL", "workers": w,
                             "seconds": round(secs, 1), "tokens_per_s": round(tokens / secs),
                             "MB_per_s": round(mb / secs, 1), "peak_rss_MiB": round(peak)})
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(markdown_table(rows, [("tool", "tool"), ("input", "input"), ("workers", "workers"),
                                ("seconds", "s"), ("tokens_per_s", "tokens/s"), ("MB_per_s", "MB/s"),
                                ("peak_rss_MiB", "max RSS of a process, MiB")]))
    write_json(args.json_out, {"machine": machine(), "corpus_MB": round(mb), "tokens": tokens, "rows": rows})


if __name__ == "__main__":
    main()
