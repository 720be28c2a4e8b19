"""Output layer + CE + KD, unfused (full logits, then the one-pass objective; and the older
separate passes: kd_loss, then CE) vs fused (logits made chunk by chunk:
megatron_kd/distill/fused.py), forward + backward, as the sequence grows.

    .venv/bin/python bench/fused_output.py
    .venv/bin/python bench/fused_output.py --tokens 2048 4096 8192 --hidden 512 --vocab 32768

One process (TP=1). The fused path's peak memory should stay flat in the token count; the
unfused path's grows with `tokens x vocab` (both models' logits; the separate passes also keep
softmaxes and a gradient buffer). The last column compares each path with the unfused one.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import machine, markdown_table, measure, write_json  # noqa: E402


def unfused(h_s, w_s, h_t, w_t, labels, mask, ce_w, kd_w):
    """The training's unfused path: full logits, then CE + KD in one pass over them, the
    gradient written over the student's logits (megatron_kd/distill/mixed.py)."""
    from megatron_kd.distill.mixed import mixed_kd_loss

    zs = h_s @ w_s.t()
    with torch.no_grad():
        zt = h_t @ w_t.t()
    total, _ = mixed_kd_loss(zs, zt, labels, mask, ce_weight=ce_w, kd_weight=kd_w, metrics=False,
                             overwrite_logits=True)
    return total


def separate(h_s, w_s, h_t, w_t, labels, mask, ce_w, kd_w):
    """Full logits, then kd_loss and torch's CE, each its own pass (what the unfused path did
    before the one-pass objective)."""
    from megatron_kd.distill.losses import kd_loss

    zs = h_s @ w_s.t()
    with torch.no_grad():
        zt = h_t @ w_t.t()
    kd = kd_loss(zs, zt, loss_mask=mask)
    ce = F.cross_entropy(zs.float(), labels, reduction="none")
    return ce_w * (ce * mask).sum() + kd_w * kd.sum()


def fused(gemm_chunk=None):
    def run(h_s, w_s, h_t, w_t, labels, mask, ce_w, kd_w):
        from megatron_kd.distill.fused import fused_output_kd

        total, _ = fused_output_kd(h_s, w_s, h_t, w_t, labels, mask, ce_weight=ce_w, kd_weight=kd_w,
                                   metrics=False, gemm_chunk_size=gemm_chunk)
        return total

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096, 8192])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--gemm-chunks", type=int, nargs="*", default=[],
                   help="also run the fused path with these output-layer chunks (tokens)")
    p.add_argument("--json-out")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    rows = []
    for n in a.tokens:
        g = torch.Generator().manual_seed(n)
        mk = lambda *shape: (torch.randn(*shape, generator=g) * 0.5).to(a.device, dtype)  # noqa: E731
        h_s0, w_s0, h_t, w_t = mk(n, a.hidden), mk(a.vocab, a.hidden), mk(n, a.hidden), mk(a.vocab, a.hidden)
        labels = torch.randint(0, a.vocab, (n,), generator=g).to(a.device)
        mask = torch.ones(n, device=a.device)
        out = {}
        paths = [("unfused", unfused), ("unfused, separate passes", separate), ("fused", fused())]
        paths += [(f"fused, {c}-token chunks", fused(c)) for c in a.gemm_chunks]
        for name, fn in paths:
            h_s = h_s0.clone().requires_grad_(True)
            w_s = w_s0.clone().requires_grad_(True)

            def step():
                loss = fn(h_s, w_s, h_t, w_t, labels, mask, 0.5, 0.5)
                loss.backward()
                out[name] = (loss.item(), h_s.grad, w_s.grad)

            def drop_grads():
                h_s.grad = w_s.grad = None
                out.pop(name, None)

            r = measure(step, a.device, a.repeats, a.warmup, before=drop_grads)
            rows.append({"tokens": n, "impl": name, "ms": f"{r['seconds'] * 1e3:.0f}",
                         "peak": f"{r['peak_extra_mib']:.0f}",
                         "logits": f"{n * a.vocab * dtype.itemsize / (1 << 20):.0f}"})
            h_s = w_s = None  # free them before the next path (step and drop_grads share the cells)
        lu, gh_u, gw_u = out["unfused"]
        rel = lambda x, y: float((x.double() - y.double()).abs().max() / y.double().abs().max())  # noqa: E731
        for row, (name, _) in zip(rows[-len(paths) + 1:], paths[1:]):
            lf, gh_f, gw_f = out[name]
            row["diff"] = f"{max(abs(lf - lu) / abs(lu), rel(gh_f, gh_u), rel(gw_f, gw_u)):.1e}"
    print(f"# output layer + CE + KD fwd+bwd: hidden {a.hidden}, vocab {a.vocab}, {a.dtype}, {a.device}"
          f"\n# {machine()}")
    print(markdown_table(rows, [("tokens", "tokens"), ("impl", "path"), ("ms", "fwd+bwd ms"),
                                ("peak", "peak extra MiB"), ("logits", "one logits MiB"),
                                ("diff", "max rel. diff vs unfused")]))
    write_json(a.json_out, {"machine": machine(), "args": vars(a), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
