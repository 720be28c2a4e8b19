"""End to end: one KD training step vs a student-only training step plus a teacher forward,
the same megatron-core models, batch and optimizer, one process.

    .venv/bin/python bench/kd_step.py                     # cpu-small student, cpu-medium teacher
    .venv/bin/python bench/kd_step.py --student models/cpu-medium --teacher models/cpu-small

Steps go through megatron_kd's train_step (megatron-core's forward_backward_func, DDP, Adam),
on synthetic token batches; the teacher has random weights (its cost does not depend on them).
Target: KD step <= 1.05 x (student step + teacher forward); KD step from a teacher cache
(top-64, other bucket; read through TeacherCache's memory maps) <= 1.05 x the student step;
a kd.auto step (the online default and the top-64 cache) <= 1.03 x the same step at a fixed α
(`--rows auto`: those rows, beside their fixed-α steps, and the KD loss alone).
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


AUTO = ["kd.alpha=1.0", "kd.auto.enabled=true"]  # kd.auto, its ceiling 1 (the α it uses costs the same)


def _cache_rows(rows: str) -> list[tuple]:
    """(label, top-K, KD options, values, zstd level) of each teacher cache measured."""
    top64 = ["kd.top_k=64", "kd.other_bucket=true"]
    every = [("all, forward KL", None, [], "fp32", 0),
             ("top-64, kd.top_k=64 + other bucket", 64, top64, "fp32", 0),
             ("top-64 fp16 + zstd 3, kd.top_k=64 + other bucket", 64, top64, "fp16", 3)]
    return every[1:2] if rows == "auto" else every


def _auto_loss_rows(a, vocab: int, rounds: int) -> list[dict]:
    """kd.auto's own cost, with far less of the machine's noise than a whole step: the KD loss
    alone (make_loss_func, forward + backward) on one micro-batch's logits `[seq, micro-batch,
    vocab]`, at a fixed α and under kd.auto, online and from top-64 cache rows, interleaved in
    alternating order."""
    from megatron_kd.config.schema import AutoAlphaConfig, KDConfig
    from megatron_kd.distill.cache import teacher_rows
    from megatron_kd.distill.objective import CachedRows, KDObjective, OnlineLogits, make_loss_func

    g = torch.Generator().manual_seed(0)
    zs, zt = (torch.randn(a.seq_length, a.micro_batch, vocab, generator=g) * 2 for _ in range(2))
    labels = torch.randint(0, vocab, (a.seq_length, a.micro_batch), generator=g)
    mask = torch.ones(a.seq_length, a.micro_batch)
    out = []
    for what, options, signal in (("online", {}, OnlineLogits(zt)),
                                  ("top-64 cache + other bucket", {"top_k": 64, "other_bucket": True},
                                   CachedRows(teacher_rows(zt, labels, vocab, 64, None)))):
        runs = {auto: (KDObjective.from_config(KDConfig(alpha=1.0 if auto else 0.5, auto=AutoAlphaConfig(enabled=auto),
                                                        **options), vocab), 1.0 if auto else 0.5)
                for auto in (False, True)}
        times = {False: [], True: []}
        for i in range(rounds + 2):
            for auto in ((False, True) if i % 2 == 0 else (True, False)):
                kd, alpha = runs[auto]
                x = zs.clone().requires_grad_(True)
                t0 = time.perf_counter()
                make_loss_func(kd, alpha, 1.0, labels, mask, signal, None)(x)[0].backward()
                if i >= 2:
                    times[auto].append(time.perf_counter() - t0)
        fixed, auto = (statistics.median(times[k]) * 1e3 for k in (False, True))
        out.append({"what": f"KD loss of one micro-batch, {what}", "fixed": f"{fixed:.2f}", "auto": f"{auto:.2f}",
                    "ratio": f"{statistics.median(t / f for t, f in zip(times[True], times[False])):.3f}"})
    return out


def _kd_step(a, common: list, options: list, teacher_module=None, cache: Path | None = None):
    """One KD configuration's step: an online teacher (`teacher_module`) or a teacher cache."""
    from megatron.core import parallel_state

    from megatron_kd.config import load_config
    from megatron_kd.distill.cache import TeacherCache
    from megatron_kd.distill.objective import KDObjective
    from megatron_kd.training.loop import train_step
    from megatron_kd.training.setup import build_train_state
    from megatron_kd.training.steps import KD_REPORTS, StepContext

    cfg = load_config(a.student, common + ["kd.alpha=0.5", *options], purpose="train")
    state = build_train_state(cfg, teacher=None if cache else [teacher_module()])
    keys = ["loss", "lm loss"] + [k for k in KD_REPORTS
                                  if cfg.kd.teacher_metrics or not k.startswith(("teacher", "top1"))]
    ctx = StepContext(kd=KDObjective.from_config(cfg.kd, cfg.model.vocab_size),
                      tp_group=parallel_state.get_tensor_model_parallel_group(), report_keys=keys,
                      cache=TeacherCache(cache) if cache else None)
    batches = _batches(cfg, 0)
    return lambda: train_step(cfg, state, batches, ctx)  # at the recipe's kd.alpha and kd.temperature


def _add_cache_runs(a, common: list, teacher, student_cfg, cache_root: Path, runs: dict, twins: dict) -> None:
    """The KD steps from a teacher cache of each kind measured (written first, over the batches the
    steps will read), and kd.auto beside the top-64 one."""
    for label, k, extra, values, zstd in _cache_rows(a.rows):
        root = cache_root / f"{k}-{values}-{zstd}"
        _write_cache(root, teacher, student_cfg, (a.warmup + a.steps) * a.global_batch, k, values, zstd)
        name = f"KD step from a teacher cache ({label})"
        runs[name] = _kd_step(a, common, extra, cache=root)
        if a.rows == "auto":  # beside the top-64 cache step
            twins[f"KD step from a teacher cache, kd.auto ({label})"] = name
            runs[f"KD step from a teacher cache, kd.auto ({label})"] = _kd_step(a, common, extra + AUTO, cache=root)


def _measure(runs: dict, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Each row's step times (s) over `rounds` rounds after `warmup`, one step of every row per
    round, every other round in reverse order: no row always runs right after the same other row
    (on a loaded machine the second of two like steps in a row ran slower)."""
    times = {name: [] for name in runs}
    for i in range(warmup + rounds):
        for name, fn in (list(runs.items()) if i % 2 == 0 else reversed(runs.items())):
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def _step_rows(times: dict, twins: dict) -> list[dict]:
    """The table: median ms per row, and the median over rounds of that round's ratio: a KD step to
    (student step + teacher forward), a cached step to the student step alone (its teacher ran once,
    elsewhere), a kd.auto step to the same step at a fixed α (`twins`)."""
    budget = [s_ + t_ for s_, t_ in zip(times["student step"], times["teacher forward"])]
    rows = [{"what": "student step", "ms": statistics.median(times["student step"]) * 1e3},
            {"what": "teacher forward", "ms": statistics.median(times["teacher forward"]) * 1e3},
            {"what": "student step + teacher forward", "ms": statistics.median(budget) * 1e3, "ratio": 1.0}]
    for name, ts in list(times.items())[2:]:
        ref, vs = (times["student step"], "student step") if "cache" in name else (budget, "student step + teacher fwd")
        if name in twins:
            ref, vs = times[twins[name]], "the same step at a fixed α"
        rows.append({"what": name, "ms": statistics.median(ts) * 1e3,
                     "ratio": statistics.median(k / b_ for k, b_ in zip(ts, ref)), "vs": vs})
    for r in rows:
        r["ms"] = f"{r['ms']:.1f}"
        r["ratio"] = f"{r['ratio']:.3f}" if "ratio" in r else ""
        r.setdefault("vs", "")
    return rows


def _arguments(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="models/cpu-small")
    p.add_argument("--teacher", default="models/cpu-medium")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--rows", choices=("fixed-alpha", "auto"), default="fixed-alpha",
                   help="fixed-alpha: the KD steps at a fixed α, online and from teacher caches; auto: kd.auto's "
                        "steps beside the fixed-α steps they are compared with (the default online step and the "
                        "top-64 cache step), and the KD loss alone")
    p.add_argument("--json-out")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = _arguments(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads or os.cpu_count() or 1)

    from megatron_kd.config import load_config
    from megatron_kd.config.schema import ParallelConfig
    from megatron_kd.models.gpt import build_gpt_model
    from megatron_kd.runtime.distributed import LaunchEnv, free_port, init_distributed
    from megatron_kd.training.loop import train_step
    from megatron_kd.training.setup import build_train_state
    from megatron_kd.training.steps import StepContext

    init_distributed(ParallelConfig(), seed=1, launch=LaunchEnv(0, 1, 0, "127.0.0.1", free_port(), "single"))
    common = [f"train.seq_length={a.seq_length}", f"train.micro_batch_size={a.micro_batch}",
              f"train.global_batch_size={a.global_batch}", "train.steps=1000", "data.mock=true",
              "train.lr=1e-4"]
    student_cfg = load_config(a.student, common, purpose="train")
    teacher_model = load_config(a.teacher, purpose="model").model

    def teacher_module():
        torch.manual_seed(2)
        return build_gpt_model(teacher_model, student_cfg.parallel, student_cfg.precision)

    # Every configuration is built first, then measured in rounds (one step of each per round),
    # so a machine that speeds up or slows down over the run affects them all alike.
    runs, twins = {}, {}  # twins: a kd.auto row -> the fixed-α row it is measured against
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
    layouts = ((False, True),) if a.rows == "auto" else ((False, True), (False, False), (True, True), (True, False))
    for fused, metrics in layouts:
        options = [f"kd.fused_output_layer={fused}", f"kd.teacher_metrics={metrics}"]
        name = (f"KD step ({'fused' if fused else 'unfused'} output layer, teacher "
                f"metrics {'on' if metrics else 'off'})")
        runs[name] = _kd_step(a, common, options, teacher_module)
        if a.rows == "auto":  # beside the default online step
            twins[f"KD step, kd.auto ({name[9:]}"] = name
            runs[f"KD step, kd.auto ({name[9:]}"] = _kd_step(a, common, options + AUTO, teacher_module)
    # KD from a teacher cache: the teacher's cost is gone, the rows come from memory-mapped files
    import tempfile

    cache_root = Path(tempfile.mkdtemp(prefix="mkd-bench-cache-"))
    _add_cache_runs(a, common, teacher, student_cfg, cache_root, runs, twins)
    rows = _step_rows(_measure(runs, a.warmup, a.steps), twins)
    print(f"# one training step: {a.student} student, {a.teacher} teacher, {a.global_batch} x "
          f"{a.seq_length} tokens (micro-batch {a.micro_batch}), median of {a.steps} rounds "
          f"(one step of each row per round, every other round in reverse order)\n# {machine()}")
    print(markdown_table(rows, [("what", "step"), ("ms", "ms"), ("ratio", "ratio"), ("vs", "ratio to")]))
    loss_rows = _auto_loss_rows(a, student_cfg.model.vocab_size, 4 * a.steps) if a.rows == "auto" else []
    if loss_rows:
        print(f"\n# the KD loss alone, one micro-batch ({a.seq_length} x {a.micro_batch} tokens), median of "
              f"{4 * a.steps} rounds (alternating order); ratio: median of kd.auto / fixed α per round")
        print(markdown_table(loss_rows, [("what", "loss"), ("fixed", "fixed α ms"), ("auto", "kd.auto ms"),
                                         ("ratio", "ratio")]))
    write_json(a.json_out, {"machine": machine(), "args": vars(a), "rows": rows, "loss_rows": loss_rows})
    import shutil

    shutil.rmtree(cache_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
