"""A run directory holds one run: starting a *different* run in it is refused (unless
--overwrite), so a typo in run.dir never resumes from, or overwrites, someone else's work;
--overwrite never deletes what the run reads (its teacher, its initial weights); and one
process at a time trains in it (an exclusive lock, held for the run's life)."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

from megatron_kd.config.loader import config_to_dict, read_yaml
from megatron_kd.config.schema import RunConfig
from megatron_kd.errors import ConfigError

# What may change between starts of the same run: its length, layout, logging and saving.
_MAY_CHANGE = ("run.name", "run.dir", "run.rendezvous_timeout_s", "parallel.", "logging.", "checkpoint.", "train.steps",
               "train.tokens", "train.stop_at_step", "model.padded_vocab_size", "data.valid",
               "train.max_consecutive_skips", "kd.teacher_metrics", "kd.chunk_size",
               "kd.fused_output_layer")
# Settings of the process, not of what it computes: how long a streamed cache is waited for
# (a raised wait after a timeout must resume, not need --overwrite, which discards checkpoints),
# and the permission to read data without a tokenizer record (the same tokens either way).
_RUNTIME_ONLY = ("teacher.cache_wait_s", "data.trust_unverified")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "valid":
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def check_run_dir(cfg: RunConfig, overwrite: bool, delete: bool = True) -> None:
    """Raise unless RUN_DIR is empty, holds this same run (resume), or overwrite is asked."""
    run_dir = Path(cfg.run.dir)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"run.dir {run_dir} is a file; choose a directory")
        return
    if overwrite:
        _refuse_deleting_inputs(cfg, run_dir)
    old = _flat(read_yaml(saved))
    new = _flat(config_to_dict(cfg))
    # a key added to the schema after the run started reads as its default (not as a change)
    defaults = _flat(config_to_dict(RunConfig()))
    diff = sorted(k for k in set(old) | set(new)
                  if old.get(k, defaults.get(k)) != new.get(k) and not k.startswith(_MAY_CHANGE + _RUNTIME_ONLY))
    if not diff:
        return
    if overwrite:
        if not delete:
            return
        for sub in ("checkpoints", "tensorboard", "eval", "analyze", "data_cache", "wandb"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        return
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
    raise ConfigError(f"run.dir {run_dir} holds a different run ({shown}"
                      f"{', ...' if len(diff) > 3 else ''}); use another run.dir, or pass "
                      "--overwrite to discard it")


def _refuse_deleting_inputs(cfg: RunConfig, run_dir: Path) -> None:
    """--overwrite deletes the run's outputs; refuse when something the run reads lives there."""
    here = run_dir.resolve()
    for key, ref in (("teacher.checkpoint", cfg.teacher.checkpoint), ("checkpoint.load", cfg.checkpoint.load),
                     ("teacher.cache", cfg.teacher.cache)):
        if ref and (Path(ref).resolve() == here or Path(ref).resolve().is_relative_to(here)):
            raise ConfigError(f"--overwrite would delete {ref} ({key}), which this run reads from "
                              f"{run_dir}; use another run.dir")


LOCK_FILE = ".mkd.lock"
_held: list[int] = []  # open lock descriptors: the kernel releases them when the process ends


def lock_run_dir(run_dir: str | Path, job: str = "mkd train", key: str = "run.dir") -> bool:
    """Hold an exclusive lock on RUN_DIR for the life of this process (released on exit or
    crash, by the kernel): a second `mkd train` on the same directory is refused in one line
    instead of both writing checkpoints and metrics over each other. True when this call made
    the directory (a launch that then fails removes it again: remove_unused_run_dir)."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(f"cannot lock {key} {run_dir} ({exc.strerror})") from exc
        raise ConfigError(f"{key} {run_dir} is in use by a running {job} (pid {holder}); "
                          f"wait for it to finish, or use another {key}") from exc
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held.append(fd)
    return created


# What a run writes before its first step: derived from the recipe and data, nothing to keep.
_STARTUP_FILES = {LOCK_FILE, "config.yaml", "data_cache", "tensorboard", "metrics.jsonl", "checkpoints"}


def remove_unused_run_dir(run_dir: str | Path) -> bool:
    """After a failed launch: remove RUN_DIR if the launch made it and nothing of a run is in it
    (no checkpoint, no metrics line), so a corrected re-run starts clean rather than against a
    directory that reads as another run's. True when removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} <= _STARTUP_FILES:
        return False
    metrics, ckpts = run_dir / "metrics.jsonl", run_dir / "checkpoints"
    if (metrics.is_file() and metrics.stat().st_size) or (ckpts.is_dir() and any(ckpts.iterdir())):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True
