"""Cross-field rules, checked before any process group starts. One place, one message each."""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from pathlib import Path

from megatron_kd.config.schema import ModelConfig, ParallelConfig, RunConfig
from megatron_kd.errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # megatron_kd/
RECIPES_DIR = PACKAGE_ROOT.parent / "recipes"
SEED_MAX = 2**32 - 1  # numpy (megatron-core's dataset shuffles) takes seeds in [0, 2**32)
# The most sequences a run may ask for (steps x global batch): megatron-core builds its sample
# index up front, 16 bytes a sample (64 GiB here; 2**32 sequences of 4096 tokens = 17.6T tokens).
MAX_SAMPLES = 2**32
INT_LIMIT = 2**63  # every integer of a config is a 64-bit one where it is used (torch, numpy, Slurm)
SIZE_LIMIT = 2**31  # model sizes index 32-bit tensors and kernels
MODEL_SIZES = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
               "kv_channels", "vocab_size", "make_vocab_size_divisible_by", "padded_vocab_size",
               "max_position_embeddings")
MAX_WAIT_S = 30 * 86400  # a streamed cache's wait (a timer beyond this overflows the platform's)
MAX_EXPERTS = 2**16  # routed experts per layer (models in use: 8 to 512); more would take hours to build
ROTARY_BASE_MAX = 10**12  # RoPE bases in use run from 1e4 to a few 1e9; 1e30 overflows torch's int64


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: RunConfig, world_size: int | None = None, purpose: str = "train") -> None:
    """Raise ConfigError for the first impossible combination found.

    `world_size` is the launcher's; when given, the layout must fit it. `purpose="model"`
    checks only what building the model needs (model recipes, `mkd info`).
    """
    _validate_model(cfg)
    if purpose == "model":
        return
    _validate_training(cfg)
    _validate_schedule_and_outputs(cfg)
    _validate_world(cfg, world_size)


def _validate_model(cfg: RunConfig) -> None:
    """The values, the model's sizes and the parallel layout: what building the model needs."""
    m, par, tr, prec = cfg.model, cfg.parallel, cfg.train, cfg.precision
    _validate_values(cfg)
    for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                 "vocab_size", "max_position_embeddings", "make_vocab_size_divisible_by"):
        _require(getattr(m, name) > 0, f"model.{name} must be > 0, got {getattr(m, name)}")
    for name in MODEL_SIZES:
        value = getattr(m, name)
        _require(value is None or value < SIZE_LIMIT,
                 f"model.{name} must be below 2**31 = {SIZE_LIMIT:,}, got {_show(value)}")
    _require(par.tp >= 1 and par.pp >= 1, f"parallel.tp and parallel.pp must be >= 1, got tp={par.tp} pp={par.pp}")
    _require(par.vpp >= 1, f"parallel.vpp must be >= 1 (1 = no virtual stages), got {par.vpp}")
    _require(par.vpp == 1 or par.pp >= 2,
             f"parallel.vpp={par.vpp} splits each pipeline rank's layers into virtual stages and needs "
             f"parallel.pp >= 2, got pp={par.pp}; set parallel.vpp=1 or raise parallel.pp")
    validate_layout(m, par)
    # a KD teacher's experts may be what EP splits: checked again when the teacher is resolved
    validate_moe(m, par, other_has_experts=bool(cfg.teacher.checkpoint or cfg.teacher.model))
    _require(not par.sequence_parallel or par.tp > 1,
             "parallel.sequence_parallel=true needs parallel.tp > 1; set it to false")
    if par.sequence_parallel:
        _require(tr.seq_length % par.tp == 0,
                 f"train.seq_length={tr.seq_length} must be divisible by parallel.tp={par.tp} "
                 "with sequence parallelism")
    if prec.fp8 is not None:
        _require(prec.dtype != "fp32",
                 "precision.fp8 needs precision.dtype=bf16 (FP8 GEMMs with bf16 elsewhere)")
    for name in ("attention_dropout", "hidden_dropout"):
        _require(0.0 <= getattr(m, name) <= 1.0, f"model.{name} must be in [0, 1], got {getattr(m, name)}")
    for name, most in (("norm_epsilon", 1.0), ("init_method_std", 1.0), ("rope_scaling_factor", 1e4)):
        _require(getattr(m, name) > 0, f"model.{name} must be > 0, got {getattr(m, name)}")
        _require(getattr(m, name) <= most, f"model.{name} must be at most {most:g}, got {getattr(m, name)}")
    _require(0 < m.rotary_base <= ROTARY_BASE_MAX,
             f"model.rotary_base must be in [1, 1e12] (RoPE theta: 1e4 to a few 1e9 in use), got "
             f"{_show(m.rotary_base)}")


def _validate_training(cfg: RunConfig) -> None:
    """The run, its optimizer, precision and length, its data and its KD options."""
    m, par, tr, prec = cfg.model, cfg.parallel, cfg.train, cfg.precision
    _validate_run_dir(cfg.run.dir)
    _require(0 <= cfg.run.seed <= SEED_MAX, f"run.seed must be in [0, {SEED_MAX}], got {cfg.run.seed}")
    _require(1 <= cfg.run.rendezvous_timeout_s <= 86400,
             f"run.rendezvous_timeout_s must be in [1, 86400] seconds, got {cfg.run.rendezvous_timeout_s}")
    _require(cfg.data.seed is None or 0 <= cfg.data.seed <= SEED_MAX,
             f"data.seed must be in [0, {SEED_MAX}], got {cfg.data.seed}")
    _require(tr.global_batch_size >= 1, f"train.global_batch_size must be >= 1, got {tr.global_batch_size}")
    _require(tr.steps is None or tr.steps >= 1, f"train.steps must be >= 1, got {tr.steps}")
    _require(tr.tokens is None or tr.tokens >= 1, f"train.tokens must be >= 1, got {tr.tokens}")
    _require(0.0 <= tr.adam_beta1 < 1.0 and 0.0 <= tr.adam_beta2 < 1.0,
             f"train.adam_beta1 and train.adam_beta2 must be in [0, 1), got {tr.adam_beta1} and {tr.adam_beta2}")
    _require(tr.adam_eps > 0, f"train.adam_eps must be > 0, got {tr.adam_eps}")
    _require(tr.weight_decay >= 0, f"train.weight_decay must be >= 0, got {tr.weight_decay}")
    _require(tr.max_consecutive_skips >= 0,
             f"train.max_consecutive_skips must be >= 0, got {tr.max_consecutive_skips}")
    _require(tr.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {tr.warmup_steps}")
    _require(tr.recompute_layers >= 1, f"train.recompute_layers must be >= 1, got {tr.recompute_layers}")
    if tr.recompute == "full":
        per_stage = m.num_layers // (par.pp * par.vpp)
        _require(per_stage % tr.recompute_layers == 0,
                 f"train.recompute_layers={tr.recompute_layers} must divide the {per_stage} layers of a pipeline "
                 "stage (model.num_layers / (parallel.pp x parallel.vpp)); choose a divisor")
    _require(not par.overlap_param_gather or par.distributed_optimizer,
             "parallel.overlap_param_gather needs parallel.distributed_optimizer=true (the parameters it "
             "gathers are the optimizer's shards)")
    _require(par.ddp_bucket_size is None or par.ddp_bucket_size >= 1,
             f"parallel.ddp_bucket_size must be >= 1 (or null), got {par.ddp_bucket_size}")
    _require(par.pp == 1 or (cfg.teacher.dtype or prec.dtype) == prec.dtype,
             f"teacher.dtype={cfg.teacher.dtype} differs from precision.dtype={prec.dtype}, which the pipeline "
             "stages' messages (both models' hidden states together) cannot carry; use parallel.pp=1 or drop it")
    _require(cfg.teacher.fp8 is None or (cfg.teacher.dtype or prec.dtype) != "fp32",
             "teacher.fp8 needs a bf16 teacher (teacher.dtype=bf16, or precision.dtype=bf16)")
    _require(tr.seq_length >= 1, f"train.seq_length must be >= 1, got {tr.seq_length}")
    _require(tr.seq_length <= m.max_position_embeddings,
             f"train.seq_length={tr.seq_length} is above model.max_position_embeddings="
             f"{m.max_position_embeddings}; shorten the sequence or raise the model's maximum")
    _require((tr.steps is None) != (tr.tokens is None),
             "give exactly one of train.steps and train.tokens"
             + (f" (got steps={_show(tr.steps)}, tokens={_show(tr.tokens)})" if tr.steps is not None else ""))
    _require(train_steps(cfg) >= 1,
             f"training length must be >= 1 step, got steps={tr.steps} tokens={tr.tokens}")
    _require(train_steps(cfg) * max(1, tr.global_batch_size) <= MAX_SAMPLES,
             f"training length of {_show_count(train_steps(cfg) * max(1, tr.global_batch_size))} sequences is above "
             f"the {MAX_SAMPLES:,} a dataset index can hold; lower train.steps or train.tokens")
    _require(tr.stop_at_step is None or 1 <= tr.stop_at_step,
             f"train.stop_at_step must be >= 1, got {tr.stop_at_step}")
    _validate_data(cfg)
    _validate_kd(cfg)


def _validate_schedule_and_outputs(cfg: RunConfig) -> None:
    """Checkpoints, logging, batch sizes and the LR schedule."""
    tr = cfg.train
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


def _validate_world(cfg: RunConfig, world_size: int | None) -> None:
    """The launch's layout against the world size (the launcher's, else parallel.world_size)."""
    par, tr = cfg.parallel, cfg.train
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
        expert_mp = par.ep * (par.etp or par.tp) * par.pp
        _require(par.ep == 1 or world % expert_mp == 0,
                 f"world size {world} is not divisible by parallel.ep x expert TP x parallel.pp = {expert_mp} "
                 f"(expert TP: parallel.etp, else parallel.tp); launch a multiple of {expert_mp} processes")
        _require(tr.global_batch_size % (tr.micro_batch_size * dp) == 0,
                 f"train.global_batch_size={tr.global_batch_size} is not divisible by "
                 f"micro_batch_size x data-parallel size = {tr.micro_batch_size} x {dp}")
        micro = tr.global_batch_size // (tr.micro_batch_size * dp)
        # the interleaved schedule runs the micro-batches in groups of pp per virtual stage
        _require(par.vpp == 1 or micro % par.pp == 0,
                 f"parallel.vpp={par.vpp} needs the micro-batches per step ({micro} = global_batch_size / "
                 f"(micro_batch_size x data-parallel size {dp})) to be a multiple of parallel.pp={par.pp}; "
                 f"set train.global_batch_size to a multiple of {tr.micro_batch_size * dp * par.pp}")


def moe_layers(m: ModelConfig) -> list[bool]:
    """Which decoder layers are MoE layers (model.moe.layer_freq), first layer first."""
    freq = m.moe.layer_freq
    if m.moe.num_experts == 0:
        return [False] * m.num_layers
    if isinstance(freq, list):
        return [bool(x) for x in freq]
    return [i % freq == 0 for i in range(m.num_layers)]


def validate_moe(m: ModelConfig, par: ParallelConfig, key: str = "model", other_has_experts: bool = False) -> None:
    """model.moe and parallel.ep / parallel.etp: one message each. `other_has_experts`: the other
    model of the run (a KD teacher, or its student) may be the one whose experts EP splits."""
    moe = m.moe
    _require(0 <= moe.num_experts <= MAX_EXPERTS,
             f"{key}.moe.num_experts must be in [0, {MAX_EXPERTS}] (0: a dense model; each expert is a module of its "
             f"own), got {_show(moe.num_experts)}")
    _require(par.ep >= 1 and (par.etp is None or par.etp >= 1),
             f"parallel.ep and parallel.etp must be >= 1, got ep={par.ep} etp={par.etp}")
    if moe.num_experts == 0:
        _require(other_has_experts or (par.ep == 1 and par.etp in (None, par.tp)),
                 f"parallel.ep={par.ep} / parallel.etp={par.etp} split experts, and {key}.moe.num_experts is 0 "
                 f"(a dense model); set {key}.moe.num_experts or parallel.ep=1")
        return
    _require(key != "model" or par.tp == 1 or par.sequence_parallel,  # a frozen teacher runs in eval mode
             f"{key}.moe at parallel.tp={par.tp} needs parallel.sequence_parallel=true (megatron-core trains MoE "
             "layers split over tensor-parallel ranks only with it); set it, or parallel.tp=1")
    _require(moe.num_experts % par.ep == 0,
             f"{key}.moe.num_experts={moe.num_experts} is not divisible by parallel.ep={par.ep}; each expert-parallel "
             "rank holds the same number of experts")
    _require(1 <= moe.router_topk <= moe.num_experts,
             f"{key}.moe.router_topk must be in [1, num_experts={moe.num_experts}], got {moe.router_topk}")
    freq = moe.layer_freq
    ok = (isinstance(freq, int) and not isinstance(freq, bool) and 1 <= freq <= m.num_layers) or (
        isinstance(freq, list) and len(freq) == m.num_layers and all(x in (0, 1) for x in freq) and any(freq))
    _require(ok, f"{key}.moe.layer_freq must be k in [1, num_layers={m.num_layers}] (every k-th layer) or a list "
                 f"of {m.num_layers} 0/1 flags with at least one 1, got {_show(freq)}")
    for name in ("ffn_hidden_size", "shared_expert_ffn_hidden_size"):
        value = getattr(moe, name)
        _require(value is None or 0 < value < SIZE_LIMIT, f"{key}.moe.{name} must be in [1, 2**31) or null, "
                                                          f"got {_show(value)}")
    expert_tp, expert_ffn = par.etp or par.tp, moe.ffn_hidden_size or m.ffn_hidden_size
    _require(expert_ffn % expert_tp == 0,
             f"{key}.moe.ffn_hidden_size={expert_ffn} (an expert's inner size) is not divisible by the expert "
             f"tensor-parallel size {expert_tp} (parallel.etp, else parallel.tp); use an etp that divides it")
    shared = moe.shared_expert_ffn_hidden_size
    _require(shared is None or shared % par.tp == 0,
             f"{key}.moe.shared_expert_ffn_hidden_size={shared} is not divisible by parallel.tp={par.tp} (the shared "
             "expert is split as the dense MLP is); use a tp that divides it")
    for name in ("aux_loss_coeff", "z_loss_coeff"):
        value = getattr(moe, name)
        _require(value is None or (math.isfinite(value) and 0 <= value <= 1),
                 f"{key}.moe.{name} must be in [0, 1], got {_show(value)}")
    _require(moe.capacity_factor is None or (math.isfinite(moe.capacity_factor) and moe.capacity_factor > 0),
             f"{key}.moe.capacity_factor must be > 0 (or null: dropless), got {_show(moe.capacity_factor)}")
    _require(not (moe.router_topk == 1 and moe.score_function == "softmax" and not moe.pre_softmax),
             f"{key}.moe.router_topk=1 with softmax scores needs {key}.moe.pre_softmax=true (a softmax over the "
             "one chosen expert is always 1: the router would get no gradient)")
    _require(not (moe.score_function == "sigmoid" and moe.pre_softmax),
             f"{key}.moe.pre_softmax applies to softmax scores; set it to false with score_function=sigmoid")


def validate_layout(m: ModelConfig, par: ParallelConfig, key: str = "model") -> None:
    """What splitting model `m` over the TP/PP/VPP layout `par` needs (the student's as
    `model.*`, a teacher's under its own name: the teacher is split over the same layout)."""
    heads, groups = m.num_attention_heads, m.num_query_groups or m.num_attention_heads
    if m.kv_channels is None:
        _require(m.hidden_size % heads == 0,
                 f"{key}.hidden_size={m.hidden_size} is not divisible by {key}.num_attention_heads="
                 f"{heads}; change one, or set {key}.kv_channels")
    _require(heads % par.tp == 0,
             f"{key}.num_attention_heads={heads} is not divisible by parallel.tp={par.tp}; "
             f"use a tp that divides {heads}")
    _require(groups >= 1 and heads % groups == 0,
             f"{key}.num_attention_heads={heads} is not a multiple of {key}.num_query_groups="
             f"{groups}; pick num_query_groups dividing {heads}")
    _require(groups % par.tp == 0,
             f"{key}.num_query_groups={groups} (GQA kv heads) is not divisible by parallel.tp="
             f"{par.tp}; use tp <= {groups} that divides it")
    if m.padded_vocab_size is not None:
        _require(m.padded_vocab_size >= m.vocab_size and m.padded_vocab_size % par.tp == 0,
                 f"{key}.padded_vocab_size={m.padded_vocab_size} must be >= {key}.vocab_size="
                 f"{m.vocab_size} and divisible by parallel.tp={par.tp}")
    _require(m.ffn_hidden_size % par.tp == 0,
             f"{key}.ffn_hidden_size={m.ffn_hidden_size} is not divisible by parallel.tp={par.tp}")
    if par.vpp == 1:
        _require(m.num_layers % par.pp == 0,
                 f"{key}.num_layers={m.num_layers} is not divisible by parallel.pp={par.pp}; "
                 f"use a pp that divides {m.num_layers}")
    else:
        chunks = par.pp * par.vpp
        _require(m.num_layers % chunks == 0,
                 f"{key}.num_layers={m.num_layers} is not divisible by parallel.pp x parallel.vpp = "
                 f"{par.pp} x {par.vpp}; choose pp and vpp whose product divides {m.num_layers}")


def _fields(obj, prefix: str = ""):
    """(recipe key, value) of every leaf of a config dataclass, lists and dicts included."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _fields(value, key + ".")
        elif isinstance(value, (list, tuple)):
            yield from ((f"{key}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, dict):
            yield from ((f"{key}.{k}", v) for k, v in value.items())
            yield from ((f"{key} (a name)", k) for k in value)
        else:
            yield key, value


def _validate_values(cfg: RunConfig) -> None:
    """Rules for every value, whatever its key: floats are finite (inf/nan would train nonsense
    and exit 0), strings hold no control characters (a newline in a path reaches generated
    scripts and log lines as a second line)."""
    for key, value in _fields(cfg):
        if key in _LENGTH_KEYS:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            _require(-INT_LIMIT < value < INT_LIMIT, f"{key} is {_show(value)}, beyond a 64-bit integer; give a "
                                                     "value of sensible size")
        elif isinstance(value, float):
            _require(math.isfinite(value), f"{key} must be a finite number, got {value}")
        elif isinstance(value, str):
            bad = next((c for c in value if unicodedata.category(c) == "Cc"), None)
            _require(bad is None, f"{key} contains the control character {bad!r}; use a value "
                                  "without newlines, tabs or other control characters")


# Bounded by the samples a dataset index can hold (validate), whose line says so.
_LENGTH_KEYS = ("train.steps", "train.tokens")


def _show_count(n: int) -> str:
    return f"{n:.3g}" if n < 10**300 else _show(n)


def _show(value) -> str:
    """A number for an error line: a huge integer by its size, not its hundreds of digits."""
    if isinstance(value, int) and abs(value) >= 10**20:
        return f"a {len(str(abs(value))) if value.bit_length() < 14000 else 'huge'}-digit number"
    return str(value)


def _validate_run_dir(run_dir: str) -> None:
    """The run directory is created, written and (with --overwrite) deleted: never the file
    system root, the home directory, the working directory itself, or inside the recipes or
    the package."""
    _require(run_dir.strip() != "", "run.dir is empty; name a directory for the run, e.g. run.dir=runs/NAME")
    _require(not run_dir.startswith("~"),
             f"run.dir={run_dir} starts with '~', which is not expanded here (nor by the shell after '='); "
             "write the full path, e.g. run.dir=$HOME/runs/NAME")
    path = Path(run_dir).absolute()
    resolved = path.resolve()
    for forbidden, what in ((Path("/"), "the file system root"), (Path.home().resolve(), "your home directory"),
                            (Path.cwd().resolve(), "the working directory")):
        _require(resolved != forbidden, f"run.dir={run_dir} is {what}; use a directory of its own, "
                                        "e.g. run.dir=runs/NAME")
    for tree, what in ((RECIPES_DIR.resolve(), "the recipes"), (PACKAGE_ROOT.resolve(), "the megatron_kd package")):
        _require(not resolved.is_relative_to(tree), f"run.dir={run_dir} is inside {what} ({tree}); "
                                                    "use a directory outside it, e.g. run.dir=runs/NAME")


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
    if not 0 < temperature < math.inf:  # also catches NaN
        return f"kd.temperature must be > 0 and finite, got {temperature}"
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
    if cfg.teacher.unigram:
        _require(not (cfg.teacher.checkpoint or cfg.teacher.cache or cfg.teacher.model),
                 "teacher.unigram is a teacher of its own: unset teacher.checkpoint, teacher.cache and teacher.model")
        _require(not cfg.data.mock, "teacher.unigram counts the tokens of data.train: set data.mock=false and "
                                    "give a tokenized corpus")
        _require(not kd.fused_output_layer, "teacher.unigram has no hidden states: set kd.fused_output_layer=false")
    _require(not (cfg.teacher.cache and kd.fused_output_layer),
             "teacher.cache gives the teacher's outputs, not its hidden states: set "
             "kd.fused_output_layer=false to train from a cache")
    wait = cfg.teacher.cache_wait_s
    _require(0.0 <= wait <= MAX_WAIT_S, f"teacher.cache_wait_s must be a number of seconds in [0, {MAX_WAIT_S:,}] "
                                        f"(30 days), got {wait:g}")
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
    _require(math.isfinite(kd.auto.tau) and kd.auto.tau > 0, f"kd.auto.tau must be > 0 and finite (nats), "
                                                             f"got {kd.auto.tau}")
    if kd.auto.enabled:
        _validate_kd_auto(kd)


def _validate_kd_auto(kd) -> None:
    """kd.auto: its α per micro-batch replaces α's schedule and any batch-level rescaling."""
    _require(kd.alpha > 0, f"kd.auto.enabled sets α up to kd.alpha (its ceiling): set kd.alpha > 0 "
                           f"(1.0 is the usual ceiling), got {kd.alpha}")
    _require(kd.alpha_schedule.kind == "constant", "kd.auto.enabled sets the KD weight from the run: "
                                                   "set kd.alpha_schedule.kind=constant")
    _require(kd.mix != "magnitude_matched", "kd.auto.enabled sets α from the run, kd.mix=magnitude_matched "
                                            "rescales the whole batch: use kd.mix=convex")


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
