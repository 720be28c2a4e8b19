"""Typed configuration: one small dataclass per concern, composed into :class:`RunConfig`.

Every field is a recipe key (`section.field`); the comment beside it is its documentation.
Cross-field rules live in :mod:`megatron_kd.config.validate`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional


@dataclass
class MoEConfig:
    """Mixture-of-experts MLPs: megatron-core's MoE layer in place of the dense MLP. num_experts 0
    (the default) is a dense model."""

    num_experts: int = 0  # routed experts per MoE layer
    router_topk: int = 2  # experts each token is sent to
    ffn_hidden_size: Optional[int] = None  # one expert's SwiGLU inner size; None = model.ffn_hidden_size
    shared_expert_ffn_hidden_size: Optional[int] = None  # a shared expert every token passes (None: none)
    layer_freq: Any = 1  # which layers are MoE: 1 = every layer, k = every k-th, or a list of 0/1 per layer
    score_function: Literal["softmax", "sigmoid"] = "softmax"  # router scores (DeepSeek-V3: sigmoid)
    pre_softmax: bool = False  # softmax over all experts before top-k (false: over the chosen, Qwen3-MoE)
    aux_loss_coeff: float = 0.0  # load-balancing loss weight, added to the student's objective
    z_loss_coeff: Optional[float] = None  # router z-loss weight (None: none)
    capacity_factor: Optional[float] = None  # tokens an expert takes, x its fair share; None = dropless
    token_dispatcher: Literal["alltoall", "allgather"] = "alltoall"  # how tokens reach their experts' EP ranks


@dataclass
class ModelConfig:
    """A llama-style decoder (RMSNorm, SwiGLU, RoPE, GQA, no biases)."""

    name: str = "unnamed"  # a label for logs and reports
    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 256  # SwiGLU inner size
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None  # GQA kv heads; None = multi-head attention
    kv_channels: Optional[int] = None  # head dim; None = hidden_size / num_attention_heads
    vocab_size: int = 256  # the tokenizer's true vocabulary size
    make_vocab_size_divisible_by: int = 128  # padded vocab = multiple of this x TP
    padded_vocab_size: Optional[int] = None  # explicit padded size (set from checkpoints/teachers)
    max_position_embeddings: int = 2048  # longest sequence the model supports
    rotary_base: int = 10000  # RoPE theta
    rope_scaling: bool = False  # llama3.1-style RoPE frequency scaling
    rope_scaling_factor: float = 8.0
    untie_embeddings_and_output_weights: bool = True  # llama3 unties; qwen3 small models tie
    qk_layernorm: bool = False  # qwen3-style RMSNorm on queries and keys
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    moe: MoEConfig = field(default_factory=MoEConfig)  # experts in place of the dense MLP (model.moe.num_experts)


@dataclass
class ParallelConfig:
    """Model parallel layout; data parallel size is derived: world / (tp * pp)."""

    tp: int = 1  # tensor parallel size
    pp: int = 1  # pipeline parallel size
    vpp: int = 1  # virtual stages per pipeline rank (interleaved 1F1B when > 1; needs pp >= 2)
    ep: int = 1  # expert parallel size: the experts of an MoE layer split over this many ranks
    etp: Optional[int] = None  # expert tensor parallel size (each expert's weights split); None = tp
    sequence_parallel: bool = False  # shard activations along sequence in TP regions (tp > 1)
    distributed_optimizer: bool = False  # shard optimizer state over data parallel ranks
    overlap_grad_reduce: bool = False  # reduce gradient buckets while backward still runs
    overlap_param_gather: bool = False  # gather updated parameters during the next forward (dist. optimizer; GPU)
    ddp_bucket_size: Optional[int] = None  # parameters per gradient bucket; None = megatron-core's default
    grad_reduce_in_fp32: bool = True  # reduce (and accumulate) gradients in fp32 whatever the dtype
    world_size: Optional[int] = None  # expected world size; None = take it from the launcher


@dataclass
class PrecisionConfig:
    """Parameter/compute precision and Transformer Engine FP8 (GPU only)."""

    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    fp8: Optional[Literal["hybrid", "e4m3"]] = None  # None = no FP8 (needs Transformer Engine)
    fp8_recipe: Literal["delayed", "tensorwise", "mxfp8", "blockwise"] = "delayed"
    fp8_margin: int = 0
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: Literal["max", "most_recent"] = "max"
    fp8_param: bool = False  # keep parameters in FP8 (saves memory)


@dataclass
class DataConfig:
    """Where tokens come from: IndexedDataset prefixes (`mkd data preprocess`) or mock data."""

    mock: bool = False  # megatron-core's MockGPTDataset: synthetic tokens, for smoke runs
    tokenizer: Optional[str] = None  # sentencepiece .model or tokenizer.json the data was made with
    eod_token: Optional[str] = None  # end-of-document piece; None = the tokenizer's eos
    train: list[str] = field(default_factory=list)  # training prefixes (PATH for PATH.bin/.idx)
    train_weights: Optional[list[float]] = None  # blend weights, one per prefix; None = by size
    split: str = "100,0,0"  # train/valid/test split of the training blend (megatron-core style)
    valid: dict[str, str] = field(default_factory=dict)  # named validation sets: name -> prefix
    seed: Optional[int] = None  # data order seed; None = run.seed
    # Data without a tokenizer record (PREFIX.meta.json, written by `mkd data preprocess`), e.g.
    # made by Megatron-LM's own tool, is refused unless this says its tokenizer is data.tokenizer.
    trust_unverified: bool = False


@dataclass
class TrainConfig:
    """Loop shape, optimizer and learning-rate schedule."""

    steps: Optional[int] = None  # optimizer steps (give steps or tokens)
    tokens: Optional[int] = None  # training length in tokens; steps = ceil(tokens / batch tokens)
    stop_at_step: Optional[int] = None  # checkpoint and stop here; a later start resumes
    micro_batch_size: int = 2  # sequences per micro-batch per data-parallel rank
    global_batch_size: int = 4  # sequences per optimizer step over all data-parallel ranks
    seq_length: int = 32  # tokens per sequence
    lr: float = 3.0e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (paper: cosine to 10%)
    lr_schedule: Literal["constant", "cosine", "linear", "wsd"] = "cosine"
    warmup_steps: int = 0
    wsd_decay_fraction: float = 0.1  # WSD: the last fraction of steps decays to the minimum
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1.0e-8
    clip_grad: float = 1.0  # global grad-norm clip; 0 disables
    max_consecutive_skips: int = 3  # non-finite steps skipped in a row before the run stops
    # activation recomputation: none | selective (attention's core, cheap) | full (whole layers:
    # `recompute_layers` per recompute unit, uniformly), trading compute for activation memory
    recompute: Literal["none", "selective", "full"] = "none"
    recompute_layers: int = 1


@dataclass
class CheckpointConfig:
    """When and where to save (megatron-core dist_checkpointing, in RUN_DIR/checkpoints)."""

    save_interval: int = 0  # save every N steps; 0 = no periodic saves
    keep_last: int = 2  # periodic checkpoints kept (budget and final ones are always kept)
    save_at_tokens: list[int] = field(default_factory=list)  # teacher zoo: keep one per budget
    save_at_end: bool = True
    load: Optional[str] = None  # initial weights (a checkpoint dir); ignored when resuming
    resume: bool = True  # continue from the run dir's latest checkpoint when there is one


@dataclass
class WandbConfig:
    """Weights & Biases tracking (optional package): every metric that goes to TensorBoard, the
    resolved config and, for sweep points, their coordinates (teacher, α, T, seed) as run config."""

    project: Optional[str] = None  # None = no W&B
    entity: Optional[str] = None  # team or user; None = the logged-in default
    name: Optional[str] = None  # run name; None = run.name
    group: Optional[str] = None  # runs grouped in the UI; `mkd sweep` sets the sweep's name
    mode: Literal["online", "offline", "disabled"] = "online"  # offline: RUN_DIR/wandb, `wandb sync` later
    tags: list[str] = field(default_factory=list)
    point: dict[str, Any] = field(default_factory=dict)  # a sweep point's coordinates (set by `mkd sweep`)


@dataclass
class LoggingConfig:
    """What gets printed and recorded (console, RUN_DIR/metrics.jsonl, TensorBoard, W&B)."""

    log_interval: int = 1  # console and metrics.jsonl line every N steps
    eval_interval: int = 0  # validate every N steps (and at the end); 0 = only at the end
    eval_samples: int = 64  # sequences per validation set and evaluation (capped at its size)
    tensorboard: bool = True  # write TensorBoard events to RUN_DIR/tensorboard
    level: Literal["debug", "info", "warning"] = "info"
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class ScheduleConfig:
    """A value over training progress (steps; tokens are proportional): from the base value to
    `final`. constant | linear | cosine | wsd (warm up from `final` over `warmup_fraction`,
    hold, then decay to `final` over the last `decay_fraction`)."""

    kind: Literal["constant", "linear", "cosine", "wsd"] = "constant"
    final: Optional[float] = None  # end value; None = the base value (constant)
    warmup_fraction: float = 0.0
    decay_fraction: float = 0.1


@dataclass
class AutoAlphaConfig:
    """kd.auto: the KD weight of each micro-batch from the teacher's advantage on the labels,
    α = kd.alpha · max(0, tanh(ā / tau)), ā a running mean (over micro-batches, the same on every
    rank) of log p_T(y) - log p_S(y); one α for all of a micro-batch's tokens, a constant of it
    (megatron_kd/distill/auto_alpha.py)."""

    enabled: bool = False  # true: kd.alpha is the ceiling of α (1.0 suits), kd.alpha_schedule stays constant
    tau: float = 1.0  # nats of mean teacher advantage at which α reaches tanh(1) = 76% of the ceiling


@dataclass
class KDConfig:
    """The distillation objective: mix * CE + ... * T^2 * KD (see megatron_kd/distill)."""

    alpha: float = 0.5  # KD weight; 0 = plain pretraining, 1 = pure KD; with kd.auto: its ceiling
    auto: AutoAlphaConfig = field(default_factory=AutoAlphaConfig)
    mix: Literal["convex", "keep_ce", "keep_kd", "magnitude_matched"] = "convex"
    kind: Literal["forward_kl", "reverse_kl", "jsd", "hard"] = "forward_kl"
    temperature: float = 1.0  # on both logits
    t2_scale: bool = True  # multiply the KD term by T^2
    top_k: Optional[int] = None  # keep the teacher's top-k tokens (forward_kl)
    top_p: Optional[float] = None  # keep the teacher's top-p mass (forward_kl)
    other_bucket: bool = False  # truncated mass as one extra "other" class
    jsd_beta: float = 0.5  # generalized JSD interpolation, in (0, 1)
    alpha_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    temperature_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    chunk_size: Optional[int] = None  # tokens per loss chunk (bounds fp32 temporaries)
    teacher_metrics: bool = True  # teacher CE, entropy and top-1 agreement each step
    # Compute both models' logits chunk by chunk inside the loss (never the full [tokens, V/TP]
    # logits): output layer + CE + KD fused. Needs a "convex"/"keep_ce"/"keep_kd" mix.
    fused_output_layer: bool = False


@dataclass
class TeacherConfig:
    """The frozen teacher: its checkpoint (and model recipe, default: the checkpoint's own)."""

    checkpoint: Optional[str] = None  # a checkpoint dir or a run dir (its latest); None = no KD
    model: Optional[str] = None  # model recipe (e.g. models/llama3-1b); None = from the checkpoint
    # A teacher-signal cache (`mkd teacher-cache`): train from it, build no teacher model
    cache: Optional[str] = None
    # > 0: teacher.cache may still be being written (its `mkd teacher-cache` job started beside
    # this run, on its own GPUs): the manifest and each shard are waited for up to this long
    cache_wait_s: float = 0.0
    # true: no model at all; the training corpus's add-one unigram distribution is the teacher
    # (the smoothing control of a study: a target with no knowledge beyond token frequencies)
    unigram: bool = False
    # The frozen teacher's own precision: None = the run's precision.dtype; fp8 (Transformer
    # Engine, GPU) runs the teacher's GEMMs in FP8
    dtype: Optional[Literal["fp32", "bf16", "fp16"]] = None
    fp8: Optional[Literal["hybrid", "e4m3"]] = None


@dataclass
class RunInfo:
    """Identity of a run."""

    name: str = "run"
    dir: str = "runs/run"  # output directory: resolved config, logs, checkpoints
    seed: int = 1234
    # How long the processes wait for each other: the rendezvous at start-up (a leftover RANK /
    # WORLD_SIZE in a shell ends here, not in a hang) and any later collective.
    rendezvous_timeout_s: int = 600


@dataclass
class RunConfig:
    """Everything a job needs; built only through :func:`megatron_kd.config.load_config`."""

    run: RunInfo = field(default_factory=RunInfo)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
