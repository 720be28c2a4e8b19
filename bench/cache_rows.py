"""Writing a teacher cache's rows (`distill.cache.teacher_rows`, the cache job's per-batch work
after the teacher's forward), against one `log_softmax` over the same logits: what a cache row
costs beyond the least any per-token distribution needs.

    .venv/bin/python bench/cache_rows.py                      # the documented CPU table
    .venv/bin/python bench/cache_rows.py --tp 1 --tokens 2048 --vocab 32768 --top-k 8 64

Each rank holds its vocabulary shard `[tokens, V/TP]` of teacher logits (the study's vocabulary,
2048, padded to a multiple of 128 per rank as megatron-core pads). Time: the slowest rank's
median of `--repeats` calls after `--warmup` (bench/common.py).
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import machine, markdown_table, measure, run_ranks, write_json  # noqa: E402


def bench_rank(rank: int, world: int, a: dict) -> dict:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from megatron_kd.distill.cache import PADDING_LOGIT, teacher_rows

    group = None
    if world > 1:
        import os

        from megatron_kd.config.schema import ParallelConfig
        from megatron_kd.runtime.distributed import LaunchEnv, init_distributed

        init_distributed(ParallelConfig(tp=world), seed=1, launch=LaunchEnv(
            rank, world, rank, "127.0.0.1", int(os.environ.get("MASTER_PORT", 29500)), "torchrun"))
        from megatron.core import parallel_state

        group = parallel_state.get_tensor_model_parallel_group()
    multiple = 128 * world
    padded = -(-a["vocab"] // multiple) * multiple
    width = padded // world
    g = torch.Generator().manual_seed(1)
    z = torch.randn(a["tokens"], 1, padded, generator=g) * 3
    z[..., a["vocab"]:] = PADDING_LOGIT
    z = z[..., rank * width:(rank + 1) * width].contiguous()
    labels = torch.randint(0, a["vocab"], (a["tokens"], 1), generator=g)
    rows = [{"impl": "log_softmax (floor)",
             **measure(lambda: torch.log_softmax(z, -1), "cpu", a["repeats"], a["warmup"], group)}]
    for k in a["top_k"]:
        top_k = None if k == 0 else k
        r = measure(lambda: teacher_rows(z, labels, a["vocab"], top_k, group), "cpu", a["repeats"], a["warmup"], group)
        rows.append({"impl": f"teacher_rows top-{k or 'all'}", **r})
    return {"rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--top-k", type=int, nargs="+", default=[64, 0], help="0: --top-k all")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json-out")
    a = p.parse_args(argv)
    out = {"machine": machine(), "args": vars(a), "results": []}
    print(f"# teacher_rows: {a.tokens} tokens x vocab {a.vocab}, one thread per rank\n# {out['machine']}")
    for tp in a.tp:
        rows = run_ranks(tp, bench_rank, vars(a))["rows"] if tp > 1 else bench_rank(0, 1, vars(a))["rows"]
        floor = rows[0]["seconds"]
        for r in rows:
            r["tp"] = tp
            r["ms"] = f"{r['seconds'] * 1e3:.1f}"
            r["vs_floor"] = f"{r['seconds'] / floor:.2f}x"
        print(markdown_table(rows, [("tp", "TP"), ("impl", "work"), ("ms", "ms / call"),
                                    ("vs_floor", "time / log_softmax")]), flush=True)
        out["results"].append({"tp": tp, "rows": rows})
    write_json(a.json_out, out)
    return 0 if all(math.isfinite(r["seconds"]) for x in out["results"] for r in x["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
