"""Cross-field rules, checked before any process group starts. One place, one message each."""

from __future__ import annotations

from megatron_kd.config.schema import RunConfig
from megatron_kd.errors import ConfigError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: RunConfig, world_size: int | None = None, purpose: str = "train") -> None:
    """Raise ConfigError for the first impossible combination found.

    `world_size` is the launcher's; when given, the layout must fit it. `purpose="model"`
    checks only what building the model needs (model recipes, `mkd info`).
    """
    m, par, tr, prec = cfg.model, cfg.parallel, cfg.train, cfg.precision
    for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                 "vocab_size", "max_position_embeddings", "make_vocab_size_divisible_by"):
        _require(getattr(m, name) > 0, f"model.{name} must be > 0, got {getattr(m, name)}")
    _require(par.tp >= 1 and par.pp >= 1, f"parallel.tp and parallel.pp must be >= 1, got tp={par.tp} pp={par.pp}")
    heads, groups = m.num_attention_heads, m.num_query_groups or m.num_attention_heads
    if m.kv_channels is None:
        _require(m.hidden_size % heads == 0,
                 f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads="
                 f"{heads}; change one, or set model.kv_channels")
    _require(heads % par.tp == 0,
             f"model.num_attention_heads={heads} is not divisible by parallel.tp={par.tp}; "
             f"use a tp that divides {heads}")
    _require(groups >= 1 and heads % groups == 0,
             f"model.num_attention_heads={heads} is not a multiple of model.num_query_groups="
             f"{groups}; pick num_query_groups dividing {heads}")
    _require(groups % par.tp == 0,
             f"model.num_query_groups={groups} (GQA kv heads) is not divisible by parallel.tp="
             f"{par.tp}; use tp <= {groups} that divides it")
    if m.padded_vocab_size is not None:
        _require(m.padded_vocab_size >= m.vocab_size and m.padded_vocab_size % par.tp == 0,
                 f"model.padded_vocab_size={m.padded_vocab_size} must be >= model.vocab_size="
                 f"{m.vocab_size} and divisible by parallel.tp={par.tp}")
    _require(m.ffn_hidden_size % par.tp == 0,
             f"model.ffn_hidden_size={m.ffn_hidden_size} is not divisible by parallel.tp={par.tp}")
    _require(m.num_layers % par.pp == 0,
             f"model.num_layers={m.num_layers} is not divisible by parallel.pp={par.pp}; "
             f"use a pp that divides {m.num_layers}")
    _require(not par.sequence_parallel or par.tp > 1,
             "parallel.sequence_parallel=true needs parallel.tp > 1; set it to false")
    if par.sequence_parallel:
        _require(tr.seq_length % par.tp == 0,
                 f"train.seq_length={tr.seq_length} must be divisible by parallel.tp={par.tp} "
                 "with sequence parallelism")
    if prec.fp8 is not None:
        _require(prec.dtype != "fp32",
                 "precision.fp8 needs precision.dtype=bf16 (FP8 GEMMs with bf16 elsewhere)")
    if purpose == "model":
        return
    _require(tr.seq_length >= 1, f"train.seq_length must be >= 1, got {tr.seq_length}")
    _require(tr.seq_length <= m.max_position_embeddings,
             f"train.seq_length={tr.seq_length} is above model.max_position_embeddings="
             f"{m.max_position_embeddings}; shorten the sequence or raise the model's maximum")
    _require((tr.steps is None) != (tr.tokens is None),
             "give exactly one of train.steps and train.tokens"
             + (f" (got steps={tr.steps}, tokens={tr.tokens})" if tr.steps is not None else ""))
    _require(train_steps(cfg) >= 1,
             f"training length must be >= 1 step, got steps={tr.steps} tokens={tr.tokens}")
    _require(tr.stop_at_step is None or 1 <= tr.stop_at_step,
             f"train.stop_at_step must be >= 1, got {tr.stop_at_step}")
    _validate_data(cfg)
    _validate_kd(cfg)
    ck, lg = cfg.checkpoint, cfg.logging
    _require(ck.save_interval >= 0, f"checkpoint.save_interval must be >= 0, got {ck.save_interval}")
    _require(all(t > 0 for t in ck.save_at_tokens),
             f"checkpoint.save_at_tokens must be positive token counts, got {ck.save_at_tokens}")
    _require(lg.log_interval >= 1, f"logging.log_interval must be >= 1, got {lg.log_interval}")
    _require(lg.eval_interval >= 0, f"logging.eval_interval must be >= 0, got {lg.eval_interval}")
    _require(lg.eval_samples >= 1, f"logging.eval_samples must be >= 1, got {lg.eval_samples}")
    _require(tr.micro_batch_size >= 1, f"train.micro_batch_size must be >= 1, got {tr.micro_batch_size}")
    _require(tr.global_batch_size % tr.micro_batch_size == 0,
             f"train.global_batch_size={tr.global_batch_size} is not a multiple of "
             f"train.micro_batch_size={tr.micro_batch_size}")
    _require(tr.lr > 0, f"train.lr must be > 0, got {tr.lr}")
    _require(0.0 <= tr.min_lr_ratio <= 1.0, f"train.min_lr_ratio must be in [0, 1], got {tr.min_lr_ratio}")
    _require(0 <= tr.warmup_steps < max(1, train_steps(cfg)) or tr.warmup_steps == 0,
             f"train.warmup_steps={tr.warmup_steps} must be >= 0 and below the run's "
             f"{train_steps(cfg)} steps")
    _require(0.0 < tr.wsd_decay_fraction <= 1.0,
             f"train.wsd_decay_fraction must be in (0, 1], got {tr.wsd_decay_fraction}")
    _require(tr.clip_grad >= 0, f"train.clip_grad must be >= 0 (0 disables), got {tr.clip_grad}")
    _require(cfg.checkpoint.keep_last >= 1, f"checkpoint.keep_last must be >= 1, got {cfg.checkpoint.keep_last}")
    world = par.world_size if world_size is None else world_size
    if par.world_size is not None and world_size is not None and par.world_size != world_size:
        raise ConfigError(
            f"parallel.world_size={par.world_size} but the launcher started {world_size} "
            "processes; launch that many or drop parallel.world_size")
    if world is not None:
        mp = par.tp * par.pp
        _require(world % mp == 0,
                 f"world size {world} is not divisible by parallel.tp x parallel.pp = {mp}; "
                 f"launch a multiple of {mp} processes")
        dp = world // mp
        _require(tr.global_batch_size % (tr.micro_batch_size * dp) == 0,
                 f"train.global_batch_size={tr.global_batch_size} is not divisible by "
                 f"micro_batch_size x data-parallel size = {tr.micro_batch_size} x {dp}")


def tokens_per_step(cfg: RunConfig) -> int:
    return cfg.train.global_batch_size * cfg.train.seq_length


def train_steps(cfg: RunConfig) -> int:
    """Optimizer steps of the run: train.steps, or train.tokens rounded up to whole steps."""
    if cfg.train.steps is not None:
        return cfg.train.steps
    if cfg.train.tokens is None:
        return 0
    return -(-cfg.train.tokens // tokens_per_step(cfg))


def parse_split(split: str) -> list[float]:
    try:
        parts = [float(x) for x in split.replace("/", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ConfigError(f"data.split={split!r} must be three non-negative weights "
                          "'train,valid,test', e.g. '98,2,0'")
    return parts


def _validate_data(cfg: RunConfig) -> None:
    d = cfg.data
    if d.mock:
        return
    _require(bool(d.train),
             "no training data configured: set data.train to IndexedDataset prefixes "
             "(`mkd data preprocess`, or `mkd data corpus` for the embedded corpus) or "
             "data.mock=true for a smoke run with megatron-core's mock dataset")
    _require(d.tokenizer is not None,
             "data.tokenizer is not set: name the tokenizer the data was made with "
             "(sentencepiece .model or tokenizer.json)")
    if d.train_weights is not None:
        _require(len(d.train_weights) == len(d.train),
                 f"data.train_weights has {len(d.train_weights)} entries for {len(d.train)} "
                 "data.train prefixes; give one weight per prefix")
        _require(all(w >= 0 for w in d.train_weights) and sum(d.train_weights) > 0,
                 f"data.train_weights must be non-negative and not all zero, got {d.train_weights}")
    split = parse_split(d.split)
    _require(split[0] > 0, f"data.split={d.split!r} leaves nothing for training")


KD_KINDS = ("forward_kl", "reverse_kl", "jsd", "hard")


def kd_option_problem(kind: str, temperature: float, top_k: int | None, top_p: float | None,
                      other_bucket: bool, jsd_beta: float) -> str | None:
    """The range rules of the KD options, the one copy: the validator (recipe keys) and
    distill.options.KDOptions (direct callers of the losses) both ask it. None when valid."""
    if kind not in KD_KINDS:
        return f"kd kind must be one of {KD_KINDS}, got {kind!r}"
    if not temperature > 0:  # also catches NaN
        return f"kd.temperature must be > 0, got {temperature}"
    if top_k is not None and top_k < 1:
        return f"kd.top_k must be >= 1, got {top_k}"
    if top_p is not None and not 0 < top_p <= 1:
        return f"kd.top_p must be in (0, 1], got {top_p}"
    if top_k is not None and top_p is not None:
        return "kd.top_k and kd.top_p are exclusive; set one"
    if (top_k or top_p) and kind != "forward_kl":
        return f"kd.top_k/top_p truncate the teacher for kd.kind=forward_kl, not {kind}"
    if other_bucket and not (top_k or top_p):
        return "kd.other_bucket needs kd.top_k or kd.top_p"
    if not 0 < jsd_beta < 1:
        return (f"kd.jsd_beta must be in (0, 1) (use forward_kl / reverse_kl for the end points), "
                f"got {jsd_beta}")
    return None


def _validate_kd(cfg: RunConfig) -> None:
    kd = cfg.kd
    _require(0.0 <= kd.alpha <= 1.0, f"kd.alpha must be in [0, 1], got {kd.alpha}")
    problem = kd_option_problem(kd.kind, kd.temperature, kd.top_k, kd.top_p, kd.other_bucket, kd.jsd_beta)
    _require(problem is None, problem or "")
    _require(kd.chunk_size is None or kd.chunk_size >= 1, f"kd.chunk_size must be >= 1, got {kd.chunk_size}")
    _require(not (kd.fused_output_layer and kd.mix == "magnitude_matched"),
             "kd.fused_output_layer computes the gradients in one pass and cannot rescale KD by "
             "the batch's CE (kd.mix=magnitude_matched); use another kd.mix or "
             "kd.fused_output_layer=false")
    for name, sched in (("alpha_schedule", kd.alpha_schedule), ("temperature_schedule", kd.temperature_schedule)):
        _require(0 <= sched.warmup_fraction < 1 and 0 < sched.decay_fraction <= 1
                 and sched.warmup_fraction + sched.decay_fraction <= 1,
                 f"kd.{name}: warmup_fraction and decay_fraction must be in [0, 1) and (0, 1] "
                 "and add up to at most 1")
    if kd.alpha_schedule.final is not None:
        _require(0 <= kd.alpha_schedule.final <= 1,
                 f"kd.alpha_schedule.final must be in [0, 1], got {kd.alpha_schedule.final}")
    if kd.temperature_schedule.final is not None:
        _require(kd.temperature_schedule.final > 0,
                 f"kd.temperature_schedule.final must be > 0, got {kd.temperature_schedule.final}")


def padded_vocab(model, tp: int) -> int:
    """The padded vocabulary a model is built with at tensor-parallel size `tp`: its explicit
    `padded_vocab_size` (taken from a checkpoint or a teacher), else megatron's rule. Every
    place that sizes logits, embeddings or memory asks this function."""
    if model.padded_vocab_size is not None:
        return model.padded_vocab_size
    return padded_vocab_size(model.vocab_size, model.make_vocab_size_divisible_by, tp)


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron's rule: pad so each TP shard has a multiple of `divisible_by` entries."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple
