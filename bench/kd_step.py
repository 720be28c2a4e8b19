"""End to end: one KD training step vs a student-only training step plus a teacher forward,
the same megatron-core models, batch and optimizer, one process.

    .venv/bin/python bench/kd_step.py                     # cpu-small student, cpu-medium teacher
    .venv/bin/python bench/kd_step.py --student models/cpu-medium --teacher models/cpu-small

Steps go through megatron_kd's train_step (megatron-core's forward_backward_func, DDP, Adam),
on synthetic token batches; the teacher has random weights (its cost does not depend on them).
Target: KD step <= 1.05 x (student step + teacher forward); KD step from a teacher cache
(top-64, other bucket; read through TeacherCache's memory maps) <= 1.05 x the student step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import machine, markdown_table, write_json  # noqa: E402


def _batches(cfg, seed: int):
    g = torch.Generator().manual_seed(seed)
    mb, s, v = cfg.train.micro_batch_size, cfg.train.seq_length, cfg.model.vocab_size
    first = 0
    while True:
        tokens = torch.randint(0, v, (mb, s + 1), generator=g)
        yield {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(mb, s),
               "position_ids": torch.arange(s).expand(mb, s), "sample_index": torch.arange(first, first + mb)}
        first += mb


def _write_cache(root: Path, teacher, cfg, samples: int, top_k: int | None, values: str = "fp32",
                 zstd: int = 0) -> None:
    """A real teacher cache (one shard) of the teacher's outputs over the first `samples` of the
    batch stream, as `mkd teacher-cache` writes it."""
    import json

    from megatron_kd.distill.cache import COMPLETE, FULL_FIELDS, MANIFEST, TOPK_FIELDS, teacher_rows
    from megatron_kd.distill.cache_encoding import FORMAT, Encoding
    from megatron_kd.distill.model import sequence_major_logits
    from megatron_kd.training.teacher_cache import _write_shard

    stream, parts = _batches(cfg, 0), []
    with torch.no_grad():
        for _ in range(samples // cfg.train.micro_batch_size):
            b = next(stream)
            z = teacher(b["tokens"], b["position_ids"], None, output_processor=sequence_major_logits)
            parts.append(teacher_rows(z, b["labels"].t(), cfg.model.vocab_size, top_k, None))
    root.mkdir(parents=True)
    fields = TOPK_FIELDS if top_k else FULL_FIELDS
    encoding = Encoding.for_vocab(cfg.model.vocab_size, values, zstd)
    _write_shard(root, 0, {name: torch.cat([p_[name] for p_ in parts]) for name in fields}, encoding)  # with CRCs
    manifest = {"fingerprint": {"top_k": top_k or "all", "vocab_size": cfg.model.vocab_size}, "num_samples": samples,
                "shard_rows": samples, "num_shards": 1, "seq_length": cfg.train.seq_length,
                "teacher_padded_vocab": None, "format": FORMAT, "encoding": encoding.to_manifest()}
    (root / MANIFEST).write_text(json.dumps(manifest))
    (root / COMPLETE).write_text("")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="models/cpu-small")
    p.add_argument("--teacher", default="models/cpu-medium")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--json-out")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads or os.cpu_count() or 1)

    from megatron.core import parallel_state

    from megatron_kd.config import load_config
    from megatron_kd.config.schema import ParallelConfig
    from megatron_kd.distill.objective import KDObjective
    from megatron_kd.models.gpt import build_gpt_model
    from megatron_kd.runtime.distributed import LaunchEnv, free_port, init_distributed
    from megatron_kd.training.loop import train_step
    from megatron_kd.training.setup import build_train_state
    from megatron_kd.training.steps import KD_REPORTS, StepContext

    init_distributed(ParallelConfig(), seed=1, launch=LaunchEnv(0, 1, 0, "127.0.0.1", free_port(), "single"))
    common = [f"train.seq_length={a.seq_length}", f"train.micro_batch_size={a.micro_batch}",
              f"train.global_batch_size={a.global_batch}", "train.steps=1000", "data.mock=true",
              "train.lr=1e-4"]
    student_cfg = load_config(a.student, common, purpose="train")
    teacher_model = load_config(a.teacher, purpose="model").model
    tp_group = parallel_state.get_tensor_model_parallel_group()

    def teacher_module():
        torch.manual_seed(2)
        return build_gpt_model(teacher_model, student_cfg.parallel, student_cfg.precision)

    # Every configuration is built first, then measured in rounds (one step of each per round),
    # so a machine that speeds up or slows down over the run affects them all alike.
    runs = {}
    state = build_train_state(student_cfg)
    student_batches = _batches(student_cfg, 0)
    runs["student step"] = lambda: train_step(student_cfg, state, student_batches, StepContext())
    teacher = teacher_module().eval()
    num_micro = a.global_batch // a.micro_batch
    teacher_batches = _batches(student_cfg, 0)

    def teacher_forward():  # the same micro-batches, no grad, eval mode
        with torch.no_grad():
            for _ in range(num_micro):
                b = next(teacher_batches)
                teacher(b["tokens"], b["position_ids"], None)

    runs["teacher forward"] = teacher_forward
    for fused in (False, True):
        for metrics in (True, False):
            cfg = load_config(a.student, common + ["kd.alpha=0.5", f"kd.fused_output_layer={fused}",
                                                   f"kd.teacher_metrics={metrics}"], purpose="train")
            kd_state = build_train_state(cfg, teacher=[teacher_module()])
            keys = ["loss", "lm loss"] + [k for k in KD_REPORTS if metrics or not k.startswith(("teacher", "top1"))]
            ctx = StepContext(kd=KDObjective.from_config(cfg.kd, cfg.model.vocab_size), alpha=0.5,
                              temperature=cfg.kd.temperature, tp_group=tp_group, report_keys=keys)
            name = (f"KD step ({'fused' if fused else 'unfused'} output layer, teacher "
                    f"metrics {'on' if metrics else 'off'})")
            runs[name] = (lambda c=cfg, st=kd_state, bt=_batches(cfg, 0), cx=ctx: train_step(c, st, bt, cx))
    # KD from a teacher cache: the teacher's cost is gone, the rows come from memory-mapped files
    import tempfile

    from megatron_kd.distill.cache import TeacherCache

    cache_root = Path(tempfile.mkdtemp(prefix="mkd-bench-cache-"))
    top64 = ["kd.top_k=64", "kd.other_bucket=true"]
    for label, k, extra, values, zstd in (("all, forward KL", None, [], "fp32", 0),
                                          ("top-64, kd.top_k=64 + other bucket", 64, top64, "fp32", 0),
                                          ("top-64 fp16 + zstd 3, kd.top_k=64 + other bucket", 64, top64, "fp16", 3)):
        root = cache_root / f"{k}-{values}-{zstd}"
        _write_cache(root, teacher, student_cfg, (a.warmup + a.steps) * a.global_batch, k, values, zstd)
        ccfg = load_config(a.student, common + ["kd.alpha=0.5", *extra], purpose="train")
        c_state = build_train_state(ccfg)
        c_ctx = StepContext(kd=KDObjective.from_config(ccfg.kd, ccfg.model.vocab_size), alpha=0.5,
                            temperature=1.0, tp_group=tp_group, report_keys=["loss", "lm loss", *KD_REPORTS],
                            cache=TeacherCache(root))
        runs[f"KD step from a teacher cache ({label})"] = (
            lambda c=ccfg, st=c_state, bt=_batches(ccfg, 0), cx=c_ctx: train_step(c, st, bt, cx))
    times = {name: [] for name in runs}
    for i in range(a.warmup + a.steps):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            if i >= a.warmup:
                times[name].append(time.perf_counter() - t0)
    budget = [s_ + t_ for s_, t_ in zip(times["student step"], times["teacher forward"])]
    rows = [{"what": "student step", "ms": statistics.median(times["student step"]) * 1e3},
            {"what": "teacher forward", "ms": statistics.median(times["teacher forward"]) * 1e3},
            {"what": "student step + teacher forward", "ms": statistics.median(budget) * 1e3,
             "ratio": 1.0}]
    for name, ts in list(times.items())[2:]:
        # the median over rounds of (KD step / (student step + teacher forward)) of that round;
        # the cached step against the student step alone (its teacher ran once, elsewhere)
        ref = times["student step"] if "cache" in name else budget
        rows.append({"what": name, "ms": statistics.median(ts) * 1e3,
                     "ratio": statistics.median(k / b_ for k, b_ in zip(ts, ref)),
                     "vs": "student step" if "cache" in name else "student step + teacher fwd"})
    for r in rows:
        r["ms"] = f"{r['ms']:.1f}"
        r["ratio"] = f"{r['ratio']:.3f}" if "ratio" in r else ""
        r.setdefault("vs", "")
    print(f"# one training step: {a.student} student, {a.teacher} teacher, {a.global_batch} x "
          f"{a.seq_length} tokens (micro-batch {a.micro_batch}), median of {a.steps} rounds "
          f"(one step of each row per round)\n# {machine()}")
    print(markdown_table(rows, [("what", "step"), ("ms", "ms"), ("ratio", "ratio"), ("vs", "ratio to")]))
    write_json(a.json_out, {"machine": machine(), "args": vars(a), "rows": rows})
    import shutil

    shutil.rmtree(cache_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
