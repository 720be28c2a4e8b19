"""The KD loss's forward + backward, side by side: megatron_kd's kd_loss, plain torch on the
gathered vocabulary, and NVIDIA Model-Optimizer's LogitsKLLoss (the real one, from
requirements-bench.txt), at TP = 1 and 2, fp32 and bf16 logits.

    .venv/bin/python bench/kd_loss.py                       # the documented CPU table
    .venv/bin/python bench/kd_loss.py --tp 1 --tokens 2048 --vocab 131072
    .venv/bin/python bench/kd_loss.py --device cuda         # the GPU variant (TP=1)

Each rank holds its vocabulary shard of the student logits (requires grad) and the teacher's
`[tokens, V/TP]`. Time: the slowest rank's median of `--repeats` calls after `--warmup`; memory:
the peak above the inputs while one call runs (bench/common.py). Forward KL, T = `--temperature`.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import machine, markdown_table, measure, run_ranks, write_json  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _ours_factory(chunk_size):
    def run(s, t, T, group, tp):
        from megatron_kd.distill.losses import kd_loss
        from megatron_kd.distill.options import KDOptions

        return kd_loss(s, t, KDOptions(temperature=T), tp_group=group, chunk_size=chunk_size)

    return run


def _plain_torch(s, t, T, group, tp):
    """What one writes without a vocab-parallel loss: gather both shards, log_softmax, kl_div."""
    if tp > 1:
        import torch.distributed.nn.functional as dnn

        s = torch.cat(dnn.all_gather(s, group=group), -1)
        with torch.no_grad():
            t = torch.cat(dnn.all_gather(t.contiguous(), group=group), -1)
    kl = F.kl_div(F.log_softmax(s.float() / T, -1), F.log_softmax(t.float() / T, -1),
                  reduction="none", log_target=True).sum(-1) * (T * T)
    return kl / tp  # every rank computes the whole loss: the gather's backward sums tp copies


def _modelopt_factory(tp):
    from megatron.core.transformer import TransformerConfig
    from modelopt.torch.distill.plugins.megatron import LogitsKLLoss

    cfg = TransformerConfig(num_layers=1, hidden_size=8 * tp, num_attention_heads=tp,
                            tensor_model_parallel_size=tp)

    def run(s, t, T, group, tp_):
        loss = LogitsKLLoss(cfg, temperature=T)
        out, _tp_reduce, _sp = loss(s.unsqueeze(1), t.unsqueeze(1))  # [s, b, V] in, [b, s] out
        return out.squeeze(0) * (T * T)

    return run


def bench_rank(rank: int, world: int, a: dict) -> dict:
    warnings.filterwarnings("ignore")  # megatron-core's / modelopt's import-time notices
    device = a["device"]
    tp = world
    group = None
    if tp > 1:
        import os

        from megatron_kd.config.schema import ParallelConfig
        from megatron_kd.runtime.distributed import LaunchEnv, init_distributed

        init_distributed(ParallelConfig(tp=tp), seed=1, launch=LaunchEnv(
            rank, world, rank, "127.0.0.1", int(os.environ.get("MASTER_PORT", 29500)), "torchrun"))
        from megatron.core import parallel_state

        group = parallel_state.get_tensor_model_parallel_group() if tp > 1 else None
    impls = {"megatron_kd": _ours_factory(a["chunk_size"])}
    if not a["only_ours"]:
        impls["plain torch"] = _plain_torch
    if a["modelopt"] and not a["only_ours"]:
        impls["Model-Optimizer"] = _modelopt_factory(tp)
    width = a["vocab"] // tp
    logits_mib = a["tokens"] * width * 4 / (1 << 20)
    rows = []
    for dname in a["dtypes"]:
        dtype = DTYPES[dname]
        g = torch.Generator().manual_seed(1000 + rank)
        s0 = (torch.randn(a["tokens"], width, generator=g) * 2).to(device=device, dtype=dtype)
        t0 = (torch.randn(a["tokens"], width, generator=g) * 2).to(device=device, dtype=dtype)
        losses = {}
        for name, fn in impls.items():
            s = s0.clone().requires_grad_(True)

            def step():
                loss = fn(s, t0, a["temperature"], group, tp)
                loss.sum().backward()
                losses[name] = loss.detach().float().sum().item()

            def drop_grad():
                s.grad = None

            r = measure(step, device, a["repeats"], a["warmup"], group, before=drop_grad)
            s = None  # free it before the next implementation (step and drop_grad share the cell)
            gc.collect()
            rows.append({"dtype": dname, "impl": name, **r,
                         "logits_mib": logits_mib * dtype.itemsize / 4})
        ref = losses["megatron_kd"]
        for row in rows[-len(impls):]:
            lv = losses[row["impl"]]
            if row["impl"] == "Model-Optimizer" and tp > 1:  # it returns each rank's partial sum
                lv_t = torch.tensor([lv], dtype=torch.float64)
                dist.all_reduce(lv_t, group=group)
                lv = lv_t.item()
            elif row["impl"] == "plain torch":
                lv *= tp
            row["loss_rel_diff"] = abs(lv - ref) / max(abs(ref), 1e-30)
    return {"rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tp", type=int, nargs="+", default=None,
                   help="tensor-parallel sizes over gloo (default: 1 2 on CPU, 1 on a GPU)")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-modelopt", dest="modelopt", action="store_false",
                   help="leave Model-Optimizer out (when nvidia-modelopt or megatron-core is absent)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="megatron_kd's tokens per chunk (kd.chunk_size; default: its own rule)")
    p.add_argument("--only-ours", action="store_true", help="time megatron_kd's loss alone")
    p.add_argument("--json-out")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if a.tp is None:
        a.tp = [1] if a.device == "cuda" else [1, 2]
    if a.device == "cuda" and a.tp != [1]:
        p.error("the GPU variant runs at --tp 1 (one device)")
    out = {"machine": machine(), "args": vars(a), "results": []}
    print(f"# KD loss forward+backward: {a.tokens} tokens x vocab {a.vocab}, {a.device}\n# {out['machine']}")
    for tp in a.tp:
        res = run_ranks(tp, bench_rank, vars(a)) if a.device == "cpu" else bench_rank(0, 1, vars(a))
        rows = res["rows"]
        for r in rows:
            ours = next(x for x in rows if x["dtype"] == r["dtype"] and x["impl"] == "megatron_kd")
            r["tp"] = tp
            r["ms"] = f"{r['seconds'] * 1e3:.0f}"
            r["vs_ours"] = f"{r['seconds'] / ours['seconds']:.2f}x"
            r["peak"] = f"{r['peak_extra_mib']:.0f}"
            r["peak_logits"] = f"{r['peak_extra_mib'] / r['logits_mib']:.2f}"
            r["diff"] = f"{r['loss_rel_diff']:.1e}"
        print(markdown_table(rows, [("tp", "TP"), ("dtype", "logits"), ("impl", "implementation"),
                                    ("ms", "fwd+bwd ms"), ("vs_ours", "time / ours"),
                                    ("peak", "peak extra MiB/rank"),
                                    ("peak_logits", "peak / logits shard"),
                                    ("diff", "loss rel. diff")]), flush=True)
        out["results"].append({"tp": tp, "rows": rows})
    write_json(a.json_out, out)
    return 0 if all(math.isfinite(r["seconds"]) for x in out["results"] for r in x["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
