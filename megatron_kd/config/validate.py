"""Cross-field rules, checked before any process group starts. One place, one message each."""

from __future__ import annotations

from megatron_kd.config.schema import RunConfig
from megatron_kd.errors import ConfigError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: RunConfig, world_size: int | None = None) -> None:
    """Raise ConfigError for the first impossible combination found.

    `world_size` is the launcher's; when given, the layout must fit it.
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
    _require(tr.seq_length >= 1, f"train.seq_length must be >= 1, got {tr.seq_length}")
    _require(tr.seq_length <= m.max_position_embeddings,
             f"train.seq_length={tr.seq_length} is above model.max_position_embeddings="
             f"{m.max_position_embeddings}; shorten the sequence or raise the model's maximum")
    _require(tr.steps >= 1, f"train.steps must be >= 1, got {tr.steps}")
    _require(tr.micro_batch_size >= 1, f"train.micro_batch_size must be >= 1, got {tr.micro_batch_size}")
    _require(tr.global_batch_size % tr.micro_batch_size == 0,
             f"train.global_batch_size={tr.global_batch_size} is not a multiple of "
             f"train.micro_batch_size={tr.micro_batch_size}")
    _require(tr.lr > 0, f"train.lr must be > 0, got {tr.lr}")
    _require(0.0 <= tr.min_lr_ratio <= 1.0, f"train.min_lr_ratio must be in [0, 1], got {tr.min_lr_ratio}")
    _require(0 <= tr.warmup_steps <= tr.steps,
             f"train.warmup_steps={tr.warmup_steps} must be between 0 and train.steps={tr.steps}")
    _require(tr.clip_grad >= 0, f"train.clip_grad must be >= 0 (0 disables), got {tr.clip_grad}")
    _require(cfg.checkpoint.keep_last >= 1, f"checkpoint.keep_last must be >= 1, got {cfg.checkpoint.keep_last}")
    if prec.fp8 is not None:
        _require(prec.dtype != "fp32",
                 "precision.fp8 needs precision.dtype=bf16 (FP8 GEMMs with bf16 elsewhere)")
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


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron's convention: pad so each TP shard has a multiple of `divisible_by` entries."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple
