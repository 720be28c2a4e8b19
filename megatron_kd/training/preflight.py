"""Checks a training run makes before any process starts (so a 64-rank job fails in seconds,
with one line, instead of after the process groups and models are up): the teacher can teach
this student (or the cache was made for this run), the model fits this machine's memory
(`check_memory`), the run directory is this run's and writable, every data prefix is whole and
made with the model's tokenizer, and the checkpoint it would resume from or load is complete.
Reads only; changes nothing. What the checks resolved and verified is returned
(`CheckedLaunch`) for the run in the same process, which then checks none of it again.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from megatron_kd.checkpoint.checkpointer import Checkpointer
from megatron_kd.checkpoint.refs import resolve_checkpoint, verify_checkpoint
from megatron_kd.config.schema import ModelConfig, RunConfig
from megatron_kd.config.validate import train_steps
from megatron_kd.data.datasets import check_prefix, load_tokenizer
from megatron_kd.data.identity import check_resume_data
from megatron_kd.distill.cache_checks import check_run
from megatron_kd.distill.teacher import check_same_teacher, resolve_teacher, teacher_identity
from megatron_kd.errors import ConfigError
from megatron_kd.training.memory import GiB, estimate
from megatron_kd.training.metrics import import_wandb
from megatron_kd.training.resolve import CheckedLaunch, Teacher
from megatron_kd.training.run_dir import check_run_dir


def check_writable(directory: Path, what: str) -> None:
    """`directory` exists or can be created, and files can be written in it. A real probe (a
    temporary file), because permission bits say nothing for root or on network file systems."""
    directory = Path(directory).absolute()
    created = []  # the directories the probe makes, removed again: a check changes nothing
    d = directory
    while not d.exists() and d != d.parent:
        created.append(d)
        d = d.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".mkd-write-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise ConfigError(f"{what} {directory} is not writable ({reason}); choose a directory "
                          "you can write to") from exc
    finally:
        for c in created:  # deepest first
            try:
                c.rmdir()
            except OSError:
                break


def check_data(cfg: RunConfig) -> None:
    """Every train / validation prefix: present, .idx and .bin consistent, not empty, tokenized
    with data.tokenizer (see datasets.check_prefix)."""
    if cfg.data.mock:
        return
    tokenizer = load_tokenizer(cfg)
    for prefix in cfg.data.train:
        check_prefix(prefix, tokenizer, "data.train", token_ids=True, trust_unverified=cfg.data.trust_unverified)
    for name, prefix in cfg.data.valid.items():
        check_prefix(prefix, tokenizer, f"data.valid.{name}", token_ids=True,
                     trust_unverified=cfg.data.trust_unverified)


FORWARD_PARTS = ("student weights", "teacher weights", "activations", "logits (last stage)")


def machine_memory() -> tuple[float, str]:
    """(bytes one process can use, what they are): the GPU's memory on CUDA, else the memory
    available now (psutil: what the OS can hand out without swapping)."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return float(props.total_memory), f"the GPU's {props.total_memory / GiB:.1f} GiB ({props.name})"
    import psutil

    free = float(psutil.virtual_memory().available)
    return free, f"this machine's {free / GiB:.1f} GiB of available memory"


def check_memory(cfg: RunConfig, teacher: ModelConfig | None = None, training: bool = True,
                 world_size: int | None = None) -> None:
    """Refuse, before any allocation, a run whose one process cannot fit: weights, gradients and
    optimizer state (training) and activations and logits, by the same arithmetic as `mkd plan`
    (slurm/plan.py's estimate at the run's layout). A floor, not a forecast: what passes can
    still run out (other processes, fragmentation), what fails cannot fit."""
    import torch

    from megatron_kd.models.gpt import check_cuda_features  # lazy: it imports megatron-core

    check_cuda_features(cfg)  # what this machine cannot run at all (fp8 on CPU) is the first line
    # the processes of this launch (the distributed optimizer divides its state by DP)
    raw = os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or ""
    launched = int(raw) if raw.isdigit() else 0
    world = max(world_size or 0, launched) or cfg.parallel.tp * cfg.parallel.pp
    plan = estimate(cfg, teacher, world)
    parts = {k: v for k, v in plan.parts.items() if training or k in FORWARD_PARTS}
    if not torch.cuda.is_available():  # no CUDA context, NCCL buffers or allocator reserve
        parts.pop("reserve (CUDA, NCCL)", None)
    need = sum(parts.values())
    have, what = machine_memory()
    if need > have:
        top = sorted(parts.items(), key=lambda kv: -kv[1])[:3]
        shares = ", ".join(f"{k} {v / GiB:,.1f} GiB" for k, v in top)
        raise ConfigError(f"the model of {cfg.run.name or 'this run'} needs at least {need / GiB:,.1f} GiB per "
                          f"process ({shares}; `mkd plan` arithmetic at tp={plan.tp} pp={plan.pp}), more than "
                          f"{what}; use a smaller model (model.hidden_size, model.num_layers, model.vocab_size), "
                          "a shorter train.seq_length or train.micro_batch_size, or more tp/pp")


def check_teacher(cfg: RunConfig) -> Teacher | None:
    """A KD run never trains against a teacher that cannot teach it: a teacher checkpoint is
    resolved, its files verified and its tokenizer, vocabulary and length checked against the
    student, and returned (its model is what the run builds); a cache must have been made for
    this run's data, length and teacher (None: the run reads the cache, resolved by the run)."""
    if cfg.teacher.cache:
        ckpt = state = None
        if cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).exists():  # its identity must match too
            ckpt, _, state = resolve_teacher(cfg, check=False)
        check_run(cfg, train_steps(cfg) * cfg.train.global_batch_size, ckpt, state)
        return None
    if cfg.teacher.checkpoint:
        ckpt, model, _ = resolve_teacher(cfg)
        return Teacher(ckpt, model)
    return None


def check_start_checkpoints(cfg: RunConfig, checkpointer: Checkpointer, overwrite: bool,
                            identity: dict | None = None) -> dict[Path, dict]:
    """The checkpoints the run starts from, verified (every file whole and unchanged), as
    {path: state}: the resume point, which must also name this run's teacher and data (not
    looked at with --overwrite, which may discard it), and checkpoint.load. `identity`: this run's
    teacher identity, when the caller has read it."""
    verified = {}
    latest = checkpointer.resume_point() if not overwrite else None
    if latest is not None:
        saved_state = verified[latest] = verify_checkpoint(latest)
        check_same_teacher(cfg, saved_state, latest, now=identity)
        check_resume_data(cfg, saved_state, latest)
    if cfg.checkpoint.load:
        if not Path(cfg.checkpoint.load).is_dir():
            raise ConfigError(f"checkpoint.load '{cfg.checkpoint.load}' does not exist; point at a "
                              "checkpoint directory (RUN_DIR/checkpoints/NAME)")
        load = resolve_checkpoint(cfg.checkpoint.load)  # a Megatron-LM or HF directory is converted once
        verified[load] = verify_checkpoint(load)
    return verified


def preflight_train(cfg: RunConfig, checkpointer: Checkpointer, overwrite: bool = False,
                    world_size: int | None = None) -> CheckedLaunch:
    """Every check of `mkd train`, once per launch (its ranks get the result): the teacher
    first, then memory, the run directory, the data and the checkpoints it starts from."""
    teacher = check_teacher(cfg)
    if cfg.logging.wandb.project:  # before any process starts: the optional package is there
        import_wandb()
    check_memory(cfg, teacher.model if teacher is not None else None, world_size=world_size)
    check_run_dir(cfg, overwrite, delete=False)
    check_writable(Path(cfg.run.dir), "run.dir")
    check_data(cfg)
    identity = teacher_identity(cfg)  # read once: the resume check and the run's checkpoints use it
    return CheckedLaunch(teacher, check_start_checkpoints(cfg, checkpointer, overwrite, identity),
                         teacher_checked=True, teacher_identity=identity)
