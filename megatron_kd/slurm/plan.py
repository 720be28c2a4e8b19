"""`mkd plan RECIPE --gpus N`: per-GPU memory of a (KD) run under its TP/PP/DP and precision,
before anything is launched; warns when over the GPU's memory and suggests a layout that fits.

Estimates (bytes per GPU, the most loaded pipeline stage):
- weights: params/(TP*PP) x 2 (bf16/fp16) or 4 (fp32); embedding on the first stage and the
  output layer on the last (both on one stage when PP=1);
- gradients: fp32 DDP buffers, 4 bytes per parameter;
- optimizer: fp32 main weights + Adam m and v, 12 bytes per parameter (fp32 training: 8),
  divided by DP with the distributed optimizer;
- teacher: weights only (frozen, no grads or optimizer state), in the run's dtype; under PP its
  hidden states in the stage inputs kept for backward, one per micro-batch in flight;
- activations: s*b*h*(10 + 24/TP) per layer (s*b*h*34/TP with sequence parallelism); with
  `train.recompute: full` each recompute unit's input (s*b*h) plus one unit's activations; times
  the micro-batches in flight on the first stage (PP for 1F1B; interleaved 1F1B, `parallel.vpp`
  = v, keeps (1 + (PP-1)/(PP*v)) times as much, Korthikanti et al. 2022). Attention's s x s
  scores: none with Transformer Engine's flash/fused kernels (taken wherever TE runs; fp8 needs
  it); megatron-core's unfused attention keeps, per layer, a/TP*s*s*b x (fp32 softmax output 4 +
  the 16-bit probabilities 2) bytes and the 1-byte s*s causal mask (`train.recompute: selective`
  recomputes this core attention in backward: none kept, one layer's live while recomputed),
  plus one reused a/TP*s*s*b score buffer. The line after the total gives the activations under the
  other kernel and recompute settings;
- logits on the last stage, s*b*V/TP each: without a teacher the student's (dtype) and
  megatron-core's fp32 copy for its CE; with one, the student's and the teacher's (dtype: the
  one-pass objective writes its gradient over the student's) plus one loss chunk's fp32
  temporaries; kd.mix=magnitude_matched (separate passes) adds the fp32 CE copy and the KD
  gradient buffer; the fused output layer holds one output-layer chunk of each model's logits;
  from a teacher cache or the unigram (no teacher model), the student's and a loss chunk's
  temporaries, plus fp32 teacher logits unless the objective can be the sparse one (forward KL
  with kd.top_k);
- a fixed reserve for the CUDA context, NCCL and fragmentation.
"""

from __future__ import annotations

import copy

from megatron_kd.config import validate
from megatron_kd.config.schema import ModelConfig, RunConfig
from megatron_kd.config.validate import tokens_per_step, train_steps
from megatron_kd.errors import ConfigError
from megatron_kd.models.flops import run_flops
from megatron_kd.models.params import count_parameters, human
from megatron_kd.training.memory import RESERVE, GiB, Plan, estimate  # noqa: F401  (re-exported for callers)


def suggest(cfg: RunConfig, teacher: ModelConfig | None, gpus: int, gpu_bytes: float) -> Plan | None:
    """The fitting layout with the smallest TP x PP (then the smallest PP), distributed optimizer.
    Only layouts `mkd train` accepts: each candidate is put to the validator (the student's run
    on `gpus` processes, and the teacher's model at the same TP/PP)."""
    options = []
    for tp in (1, 2, 4, 8):
        for pp in (1, 2, 4, 8, 16):
            if not _valid_layout(cfg, teacher, gpus, tp, pp):
                continue
            plan = estimate(cfg, teacher, gpus, tp, pp, distributed_optimizer=True)
            if plan.total <= gpu_bytes:
                options.append((tp * pp, pp, plan))
    return min(options, key=lambda o: (o[0], o[1]))[2] if options else None


def _valid_layout(cfg: RunConfig, teacher: ModelConfig | None, gpus: int, tp: int, pp: int,
                  vpp: int | None = None) -> bool:
    cand = copy.deepcopy(cfg)
    cand.parallel.tp, cand.parallel.pp, cand.parallel.distributed_optimizer = tp, pp, True
    # the recipe's virtual stages where they apply
    cand.parallel.vpp = vpp or (cfg.parallel.vpp if pp > 1 else 1)
    cand.parallel.world_size = None
    try:
        validate(cand, gpus)
        if teacher is not None:
            cand.model = copy.deepcopy(teacher)
            validate(cand, gpus, purpose="model")
    except ConfigError:
        return False
    return True


PAPER_TEACHER_CHECKPOINTS = 28  # the paper's grid: teacher sizes x training-token budgets (docs/STUDY.md)


def cache_lines(cfg: RunConfig, teacher: ModelConfig, points: int) -> list[str]:
    """Teacher-cache size per encoding for this recipe's tokens, the paper grid's total, and an α
    sweep's compute with and without a cache."""
    from megatron_kd.distill.cache_encoding import Encoding  # lazy: numpy and torch, only for the cache lines

    tokens = train_steps(cfg) * tokens_per_step(cfg)
    v = cfg.model.vocab_size
    encodings = {values: Encoding.for_vocab(v, values) for values in ("fp32", "fp16")}
    ids = encodings["fp16"].describe().split(", ")[1]
    lines = [f"teacher cache for {human(tokens)} tokens (mkd teacher-cache --top-k K --dtype D; {ids}; "
             "zstd shrinks it further):"]
    for k in (8, 64, "all"):
        cells = []
        for values, enc in encodings.items():
            per_token = enc.bytes_per_token(v, k)
            cells.append(f"{values} {per_token:>9,.1f} B/token {per_token * tokens / GiB:12,.1f} GiB")
        lines.append(f"  top-{k:<4} " + "   ".join(cells))
    sampled = Encoding.for_vocab(v, "fp16", draws=12)
    per_token = sampled.bytes_per_token(v, 12)
    lines.append(f"  sampled, 12 draws (--sample 12, fp16; {sampled.count_bits}-bit counts): {per_token:,.1f} B/token "
                 f"{per_token * tokens / GiB:,.1f} GiB")
    grid = {k: encodings["fp16"].bytes_per_token(v, k) * tokens * PAPER_TEACHER_CHECKPOINTS / 2 ** 40
            for k in (8, 64)}
    lines.append(f"  the paper's grid ({PAPER_TEACHER_CHECKPOINTS} teacher checkpoints) at these tokens, fp16: "
                 f"top-8 {grid[8]:,.1f} TiB, top-64 {grid[64]:,.1f} TiB")
    flops = run_flops(cfg.model, cfg.train.seq_length, tokens, teacher)
    student, forward = flops.student, flops.teacher_pass
    online, cached = points * (student + forward), points * student + forward
    lines.append(f"a {points}-point sweep against this teacher: {online:.3g} FLOPs online, {cached:.3g} from one "
                 f"cache ({100 * (1 - cached / online):.0f}% less; the teacher forward is "
                 f"{forward / student:.2f}x a student run)")
    return lines


def expert_lines(cfg: RunConfig, teacher: ModelConfig | None) -> list[str]:
    """An MoE model's total and active parameters and how its experts are split (none for dense)."""
    lines = []
    for who, m in (("student", cfg.model), ("teacher", teacher)):
        if m is None or not m.moe.num_experts:
            continue
        c = count_parameters(m)
        etp = cfg.parallel.etp or cfg.parallel.tp
        lines.append(f"  {who} {m.name}: {human(c.total)} parameters, {human(c.active)} active per token "
                     f"({m.moe.num_experts} experts, top-{m.moe.router_topk}); routed experts {human(c.experts)} "
                     f"split over ep={cfg.parallel.ep} x expert tp={etp}")
    return lines


def format_plan(plan: Plan, gpu_bytes: float, title: str) -> list[str]:
    vpp = f" vpp={plan.vpp}" if plan.vpp > 1 else ""
    lines = [f"{title}: tp={plan.tp} pp={plan.pp}{vpp} dp={plan.dp}"]
    width = max(len(k) for k in plan.parts)
    for k, v in plan.parts.items():
        lines.append(f"  {k:<{width}}  {v / GiB:8.2f} GiB")
    verdict = "fits" if plan.total <= gpu_bytes else "DOES NOT FIT"
    lines.append(f"  {'total per GPU':<{width}}  {plan.total / GiB:8.2f} GiB of {gpu_bytes / GiB:.0f} GiB: {verdict}")
    return lines + [f"  {note}" for note in plan.notes]


def pipeline_line(cfg: RunConfig, plan: Plan, teacher: ModelConfig | None, gpus: int) -> str | None:
    """The pipeline bubble of the run's schedule: (PP-1) / (VPP x M) of a step, M the micro-batches
    per step of a data-parallel replica (Narayanan et al. 2021); None without PP."""
    if plan.pp == 1:
        return None
    micro = max(1, cfg.train.global_batch_size // (cfg.train.micro_batch_size * plan.dp))
    bubble = (plan.pp - 1) / (plan.vpp * micro)
    kind = f"interleaved 1F1B, {plan.vpp} virtual stages per rank" if plan.vpp > 1 else "1F1B"
    line = f"pipeline: {kind}, {micro} micro-batches a step; bubble (PP-1)/(VPP x M) = {100 * bubble:.1f}% of the step"
    if plan.vpp == 1 and _valid_layout(cfg, teacher, gpus, plan.tp, plan.pp, vpp=2):
        line += "; parallel.vpp=2 halves it (each rank's layers, the teacher's too, in 2 virtual stages)"
    return line
