"""Per-process memory of a (KD) run at a layout: the arithmetic `mkd plan` prints (its module
docstring, slurm/plan.py, lists what each part counts) and the training preflight's memory
check uses (training/preflight.py: a run that cannot fit is refused before any allocation)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_kd.config import padded_vocab
from megatron_kd.config.schema import ModelConfig, RunConfig
from megatron_kd.distill.fused import default_gemm_chunk
from megatron_kd.distill.mixed import default_row_chunk
from megatron_kd.models.params import count_parameters

GiB = 1 << 30
RESERVE = 6 * GiB


@dataclass
class Plan:
    tp: int
    pp: int
    dp: int
    parts: dict[str, float]
    vpp: int = 1

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def _bytes(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


def _stage_params(m: ModelConfig, tp: int, pp: int, padded_vocab: int) -> tuple[float, float]:
    """(params on the heaviest stage / TP, of which vocabulary matrices)."""
    c = count_parameters(m, padded_vocab)
    layers = c.per_layer * math.ceil(m.num_layers / pp)
    vocab_first = c.embedding
    vocab_last = c.output if m.untie_embeddings_and_output_weights else c.embedding * (pp > 1)
    vocab = vocab_first + vocab_last if pp == 1 else max(vocab_first, vocab_last)
    return (layers + vocab + c.final_norm) / tp, vocab / tp


def estimate(cfg: RunConfig, teacher: ModelConfig | None, gpus: int, tp: int | None = None,
             pp: int | None = None, distributed_optimizer: bool | None = None) -> Plan:
    tp = tp or cfg.parallel.tp
    pp = pp or cfg.parallel.pp
    dist_opt = cfg.parallel.distributed_optimizer if distributed_optimizer is None else distributed_optimizer
    dp = max(1, gpus // (tp * pp))
    vpp = cfg.parallel.vpp if pp > 1 else 1
    m, tr = cfg.model, cfg.train
    wbytes = _bytes(cfg.precision.dtype)
    padded = padded_vocab(m, tp)
    params, _ = _stage_params(m, tp, pp, padded)
    opt_bytes = 12 if wbytes == 2 else 8
    parts = {"student weights": params * wbytes, "gradients": params * 4,
             "optimizer state": params * opt_bytes / (dp if dist_opt else 1)}
    if teacher is not None:
        t_params, _ = _stage_params(teacher, tp, pp, padded)
        parts["teacher weights"] = t_params * wbytes
    s, b, h = tr.seq_length, tr.micro_batch_size, m.hidden_size
    per_layer = s * b * h * (34 / tp if cfg.parallel.sequence_parallel else 10 + 24 / tp)
    layers = math.ceil(m.num_layers / pp)
    if tr.recompute == "full":  # each unit's input kept; one unit's activations live at a time
        unit = tr.recompute_layers
        stage = (layers / unit) * s * b * h * 2 + unit * per_layer
    else:  # selective recompute drops what flash attention already does not keep
        stage = per_layer * layers
    in_flight = pp * (1 + (pp - 1) / (pp * vpp) if vpp > 1 else 1)  # stage-sized micro-batches kept
    parts["activations"] = stage * in_flight * wbytes / 2
    if teacher is not None:  # the teacher's forward keeps no activations, only a layer's worth
        parts["activations"] += s * b * teacher.hidden_size * 10 * wbytes / 2
        if pp > 1:  # and its hidden states in the stage inputs kept for backward
            parts["activations"] += in_flight * s / (tp if cfg.parallel.sequence_parallel else 1) * b \
                * teacher.hidden_size * wbytes
    signal_only = teacher is None and bool(cfg.teacher.cache or cfg.teacher.unigram) and cfg.kd.alpha > 0
    parts["logits (last stage)"] = _logits_bytes(cfg, teacher is not None, s * b, padded // tp, wbytes, signal_only)
    parts["reserve (CUDA, NCCL)"] = RESERVE
    return Plan(tp, pp, dp, parts, vpp)


def _logits_bytes(cfg: RunConfig, kd: bool, tokens: int, v_local: int, wbytes: int,
                  signal_only: bool = False) -> float:
    """`signal_only`: KD from a teacher cache or the unigram, no teacher model: the student's
    logits and a loss chunk's temporaries, plus an fp32 copy of dense teacher logits unless the
    objective can be the sparse one (truncated forward KL: a top-K cache, the unigram's top-k
    row), which holds none (the smaller count, as a floor should)."""
    if not kd and not signal_only:
        return tokens * v_local * (wbytes + 4)
    rows = min(tokens, cfg.kd.chunk_size or default_row_chunk(v_local, "cuda", cfg.parallel.tp))
    temps = rows * v_local * 4 * 5  # RowLoss's 4 fp32 temporaries and a chunk of gradient
    if signal_only:
        sparse = cfg.kd.kind == "forward_kl" and cfg.kd.top_k is not None and cfg.kd.mix != "magnitude_matched"
        return tokens * v_local * (wbytes if sparse else wbytes + 4) + temps
    if cfg.kd.fused_output_layer:
        chunk = min(tokens, max(rows, default_gemm_chunk(v_local, "cuda")))
        return chunk * v_local * (2 * wbytes + 4) + temps
    if cfg.kd.mix == "magnitude_matched":
        return tokens * v_local * (4 * wbytes + 4) + rows * v_local * 4 * 3
    return tokens * v_local * 2 * wbytes + temps
