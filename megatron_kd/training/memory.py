"""Per-process memory of a (KD) run at a layout: the arithmetic `mkd plan` prints (its module
docstring, slurm/plan.py, lists what each part counts) and the training preflight's memory
check uses (training/preflight.py: a run that cannot fit is refused before any allocation)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from megatron_kd.config import padded_vocab
from megatron_kd.config.schema import ModelConfig, RunConfig
from megatron_kd.distill.fused import default_gemm_chunk
from megatron_kd.distill.losses import default_row_chunk
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
    fused_attention: bool = True  # counted with a kernel that keeps no s x s attention scores
    notes: list[str] = field(default_factory=list)  # how the count depends on the attention kernel

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def _bytes(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


def _stage_params(m: ModelConfig, tp: int, pp: int, padded_vocab: int, ep: int = 1,
                  etp: int | None = None) -> tuple[float, float]:
    """(params on the heaviest stage / TP, of which vocabulary matrices). An MoE model's routed
    experts are split over EP x expert TP instead of TP."""
    c = count_parameters(m, padded_vocab)
    share = math.ceil(m.num_layers / pp) / m.num_layers
    experts_per_tp = c.experts * share * tp / (ep * (etp or tp))  # in the units of the / tp below
    layers = (c.layers_total - c.experts) * share + experts_per_tp
    vocab_first = c.embedding
    vocab_last = c.output if m.untie_embeddings_and_output_weights else c.embedding * (pp > 1)
    vocab = vocab_first + vocab_last if pp == 1 else max(vocab_first, vocab_last)
    return (layers + vocab + c.final_norm) / tp, vocab / tp


def estimate(cfg: RunConfig, teacher: ModelConfig | None, gpus: int, tp: int | None = None,
             pp: int | None = None, distributed_optimizer: bool | None = None,
             fused_attention: bool | None = None) -> Plan:
    """`fused_attention`: whether the attention kernel keeps no s x s scores (Transformer Engine's
    flash/fused attention) or keeps them (megatron-core's local, unfused attention); None: the
    kernel this run gets (attention_is_fused)."""
    tp = tp or cfg.parallel.tp
    pp = pp or cfg.parallel.pp
    dist_opt = cfg.parallel.distributed_optimizer if distributed_optimizer is None else distributed_optimizer
    dp = max(1, gpus // (tp * pp))
    vpp = cfg.parallel.vpp if pp > 1 else 1
    m, tr = cfg.model, cfg.train
    wbytes = _bytes(cfg.precision.dtype)
    padded = padded_vocab(m, tp)
    params, _ = _stage_params(m, tp, pp, padded, cfg.parallel.ep, cfg.parallel.etp)
    opt_bytes = 12 if wbytes == 2 else 8
    parts = {"student weights": params * wbytes, "gradients": params * 4,
             "optimizer state": params * opt_bytes / (dp if dist_opt else 1)}
    if teacher is not None:
        t_params, _ = _stage_params(teacher, tp, pp, padded, cfg.parallel.ep, cfg.parallel.etp)
        parts["teacher weights"] = t_params * wbytes
    s, b = tr.seq_length, tr.micro_batch_size
    fused = attention_is_fused(cfg) if fused_attention is None else fused_attention
    parts["activations"] = _activations(cfg, teacher, tp, pp, vpp, fused)
    notes = [_attention_note(cfg, teacher, tp, pp, vpp, fused)]
    signal_only = teacher is None and bool(cfg.teacher.cache or cfg.teacher.unigram) and cfg.kd.alpha > 0
    parts["logits (last stage)"] = _logits_bytes(cfg, teacher is not None, s * b, padded // tp, wbytes, signal_only)
    parts["reserve (CUDA, NCCL)"] = RESERVE
    return Plan(tp, pp, dp, parts, vpp, fused, notes)


def attention_is_fused(cfg: RunConfig) -> bool:
    """Whether the run's attention keeps no s x s scores: Transformer Engine's flash/fused kernels
    (models/gpt.layer_spec takes them wherever TE runs; precision.fp8 needs TE), else
    megatron-core's local DotProductAttention, which keeps them for backward."""
    if cfg.precision.fp8 is not None:
        return True
    from megatron_kd.models.gpt import have_transformer_engine  # lazy: torch, only without fp8

    return have_transformer_engine()


def attention_score_bytes(m: ModelConfig, s: int, b: int, tp: int, dtype: str) -> float:
    """Bytes of s x s attention scores megatron-core's unfused attention (core_attn,
    transformer/dot_product_attention.py) keeps for backward, per layer and micro-batch: the fp32
    softmax output (attention_softmax_in_fp32 is its default) and the probabilities the
    probabilities x V matmul keeps, cast back to a 16-bit dtype (fp32 training: the softmax output
    itself) or, with attention dropout, the dropout's output and its 1-byte mask; and the s x s
    causal mask (1 byte a position) each layer builds and its masked fill keeps."""
    wbytes = _bytes(dtype)
    kept = 4 + (wbytes if wbytes == 2 or m.attention_dropout > 0 else 0) + (1 if m.attention_dropout > 0 else 0)
    return m.num_attention_heads / tp * s * s * b * kept + s * s


def _in_flight(pp: int, vpp: int) -> float:
    """Stage-sized micro-batches of activations kept on the first stage: PP for 1F1B, interleaved
    1F1B (v virtual stages) 1 + (PP-1)/(PP*v) times that (Korthikanti et al. 2022)."""
    return pp * (1 + (pp - 1) / (pp * vpp) if vpp > 1 else 1)


def _activations(cfg: RunConfig, teacher: ModelConfig | None, tp: int, pp: int, vpp: int, fused: bool) -> float:
    """Activations on the heaviest stage: the student's (_student_activations), a teacher layer's
    worth (its forward keeps none) and, under PP, its hidden states in the stage inputs kept for
    backward; with the unfused kernel, one layer's s x s scores live at a time outside what is
    kept (a student layer's recompute or a teacher layer's forward) and megatron-core's one
    reused score buffer (baddbmm's output, as large as the most heads ask)."""
    tr, m, wbytes = cfg.train, cfg.model, _bytes(cfg.precision.dtype)
    s, b, dtype = tr.seq_length, tr.micro_batch_size, cfg.precision.dtype
    scores = 0.0 if fused else attention_score_bytes(m, s, b, tp, dtype)
    kept, recomputed = _student_activations(cfg, tp, pp, vpp, scores)
    if teacher is not None:
        kept += s * b * teacher.hidden_size * 10 * wbytes / 2
        if pp > 1:
            kept += _in_flight(pp, vpp) * s / (tp if cfg.parallel.sequence_parallel else 1) * b \
                * teacher.hidden_size * wbytes
    if fused:
        return kept
    teacher_layer = attention_score_bytes(teacher, s, b, tp, dtype) if teacher is not None else 0.0
    heads = max(m.num_attention_heads, teacher.num_attention_heads if teacher is not None else 0)
    return kept + max(recomputed, teacher_layer) + heads / tp * s * s * b * wbytes



def _attention_note(cfg: RunConfig, teacher: ModelConfig | None, tp: int, pp: int, vpp: int, fused: bool) -> str:
    """One line: the attention kernel counted and the activations under the other choices, so the
    effect of train.recompute=selective shows whichever kernel the run gets."""
    def gib(recompute: str, fused_kernel: bool) -> str:
        other = replace(cfg, train=replace(cfg.train, recompute=recompute))
        return f"{_activations(other, teacher, tp, pp, vpp, fused_kernel) / GiB:.2f} GiB"

    recompute = cfg.train.recompute
    if fused:
        return (f"attention: flash/fused (Transformer Engine) keeps no s x s scores, so train.recompute=selective "
                f"keeps what none does; megatron-core's unfused attention (no Transformer Engine) would need "
                f"activations {gib('none', False)} (recompute none), {gib('selective', False)} (selective)")
    return (f"attention: megatron-core's unfused kernel (no Transformer Engine here) keeps s x s scores; "
            f"activations {gib('none', False)} with recompute none, {gib('selective', False)} with selective "
            f"(core attention recomputed in backward), {gib('full', False)} with full; flash/fused (Transformer "
            f"Engine) {gib(recompute, True)} (train.recompute={recompute})")


def _student_activations(cfg: RunConfig, tp: int, pp: int, vpp: int, scores: float) -> tuple[float, float]:
    """(kept, recomputed): the student's activations kept on its heaviest stage, s*b*h*(10 + 24/TP)
    bytes a layer at 16 bits (34/TP with sequence parallelism) plus `scores`
    (attention_score_bytes; 0 with a fused kernel) where core attention keeps them: every layer
    without recompute, none under selective recompute (megatron-core's recompute_modules default,
    core_attn, recomputes them in backward: `recomputed`, one layer's), under full recompute one
    unit's (`recomputed`, live with the unit's other activations while it is recomputed)."""
    m, tr = cfg.model, cfg.train
    s, b, h = tr.seq_length, tr.micro_batch_size, m.hidden_size
    half = _bytes(cfg.precision.dtype) / 2
    per_layer = s * b * h * (34 / tp if cfg.parallel.sequence_parallel else 10 + 24 / tp) * half
    layers = math.ceil(m.num_layers / pp)
    recomputed = 0.0
    if tr.recompute == "full":  # each unit's input kept; one unit's activations live at a time
        unit = tr.recompute_layers
        stage, recomputed = (layers / unit) * s * b * h * 2 * half + unit * per_layer, unit * scores
    elif tr.recompute == "selective":
        stage, recomputed = per_layer * layers, scores
    else:
        stage = (per_layer + scores) * layers
    return stage * _in_flight(pp, vpp), recomputed


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
