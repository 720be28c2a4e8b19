"""Training checkpoints: model + optimizer (dist_checkpointing, reshardable across TP/PP/DP),
scheduler, per-rank RNG states and the data position; periodic, token-budget and final saves.

Layout of RUN_DIR/checkpoints:
    step_0000100/        periodic (the last `keep_last` kept)
    tokens_5000000000/   a token-budget checkpoint (teacher zoo), always kept
    step_0000500/        final, always kept
    latest               name of the newest complete checkpoint (written last)
Each checkpoint holds megatron-core's sharded files, `mkd_state.json` (step, consumed samples,
tokens, scheduler state, kind), `config.yaml` (the config it was made with), the tokenizer
file it was made with, and `rng/rank*.pt`.
A checkpoint is written into NAME.partial and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_kd.checkpoint.model_io import chunks_of, load_model_state, require_finite_weights, sharded_model_state
from megatron_kd.checkpoint.refs import (
    LATEST,
    STATE_FILE,
    latest_checkpoint,
    read_state,
    write_state,
)
from megatron_kd.checkpoint.safe_load import check_checkpoint_pickles
from megatron_kd.config import dump_config, padded_vocab
from megatron_kd.config.schema import RunConfig
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic

log = logging.getLogger("megatron_kd.checkpoint")

# The distributed optimizer's state is saved in the format that loads at any DP/TP/PP.
_OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    consumed_samples: int
    tokens: int
    kind: str


def checkpoint_root(cfg: RunConfig) -> Path:
    return Path(cfg.run.dir) / "checkpoints"


def remove_partial_saves(root: Path) -> None:
    """Delete NAME.partial directories: saves that never completed (the process died)."""
    if root.is_dir():
        for p in root.glob("*.partial"):
            log.warning("removing %s: a save that did not complete", p)
            shutil.rmtree(p, ignore_errors=True)


def _barrier():
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _sharded_state(model_chunks, optimizer, is_loading: bool) -> dict:
    model_sd = sharded_model_state(chunks_of(model_chunks))
    state = {"model": model_sd}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata=dict(_OPTIM_METADATA))
    return state


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


@contextlib.contextmanager
def _preemption_signals_deferred():
    """Block SIGUSR1/SIGTERM while dist_checkpointing saves. Its helper processes (a spawned
    multiprocessing manager) inherit the blocked mask, so Slurm's warning signal, sent to every
    process of the job step, cannot kill them mid-save; in this process the signal stays pending
    and reaches our handler when the save is done."""
    sigs = {signal.SIGUSR1, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


FULL_BELOW = 64 << 20  # bytes free: a write that failed with less left is taken for a full disk


def _disk_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path).free < FULL_BELOW
    except OSError:
        return False


def save_checkpoint(cfg: RunConfig, state, name: str, kind: str, tokenizer_file: str | None) -> Path:
    """Collective. Writes RUN_DIR/checkpoints/NAME and moves `latest` to it."""
    from megatron.core import dist_checkpointing

    root = checkpoint_root(cfg)
    _SAVING_STEP[0] = state.step
    final, partial = root / name, root / f"{name}.partial"
    if _rank() == 0:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    _barrier()
    try:
        with _preemption_signals_deferred():
            dist_checkpointing.save(_sharded_state(state.model, state.optimizer, is_loading=False), str(partial))
        _inject_kill("after_shards")
        (partial / "rng").mkdir(exist_ok=True)
        torch.save(_rng_state(), partial / "rng" / f"rank{_rank()}.pt")
    except BaseException as exc:  # torch's CheckpointException is a BaseException
        # A failed write (a full disk) gives its space back: the half-written copy is useless,
        # and the previous checkpoint stays in place.
        full = _disk_full(partial)
        shutil.rmtree(partial, ignore_errors=True)
        if full:  # megatron-core's writer workers report only "an error is caught", no errno
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(partial)) from exc
        raise
    _barrier()
    if _rank() == 0:
        tokens = state.step * cfg.train.global_batch_size * cfg.train.seq_length
        meta = {"step": state.step, "consumed_samples": state.consumed_samples, "tokens": tokens,
                "kind": kind, "scheduler": state.scheduler.state_dict(),
                "world_size": torch.distributed.get_world_size(),
                "parallel": {"tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "vpp": cfg.parallel.vpp},
                "padded_vocab_size": padded_vocab(cfg.model, cfg.parallel.tp),
                "tokenizer": state.tokenizer_info, "teacher": state.teacher_identity}
        try:
            dump_config(cfg, partial / "config.yaml")
            if tokenizer_file:
                shutil.copy2(tokenizer_file, partial / Path(tokenizer_file).name)
            # Every file's size and checksum, so a truncated, partly copied or corrupted copy is
            # caught before loading (verify_checkpoint).
            write_state(partial, meta)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        _inject_kill("before_rename")
        replaced = root / f"{name}.replaced"
        if final.exists():  # the old copy stays complete until the new one is in place
            shutil.rmtree(replaced, ignore_errors=True)
            final.rename(replaced)
        partial.rename(final)
        shutil.rmtree(replaced, ignore_errors=True)
        write_text_atomic(root / LATEST, name)
        _prune(root, cfg.checkpoint.keep_last)
    _barrier()
    log.info("saved checkpoint %s (step %d, %s)", final, state.step, kind)
    return final


def _inject_kill(point: str) -> None:
    """Fault injection for the atomic-save tests: MKD_INJECT_KILL_IN_SAVE=STEP:POINT SIGKILLs
    this process at POINT of the save made at STEP (a real kill, mid-save)."""
    want = os.environ.get("MKD_INJECT_KILL_IN_SAVE", "")
    if want and want == f"{_SAVING_STEP[0]}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


_SAVING_STEP = [-1]


def _prune(root: Path, keep_last: int) -> None:
    periodic = sorted((p for p in root.iterdir() if p.is_dir() and (p / STATE_FILE).is_file()
                       and read_state(p)["kind"] == "periodic"), key=lambda p: read_state(p)["step"])
    latest = latest_checkpoint(root)
    for p in periodic[:-keep_last]:
        if p != latest:
            shutil.rmtree(p)


def load_checkpoint(path: Path, state, load_optimizer: bool = True) -> CheckpointInfo:
    """Collective. Restores model (any saved TP/PP), optimizer, scheduler, data position; RNG
    too when the world size is the one it was saved with."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    meta = read_state(path)
    check_checkpoint_pickles(path)  # before megatron-core unpickles anything in it
    optimizer = state.optimizer if load_optimizer else None
    sharded = _sharded_state(state.model, optimizer, is_loading=True)
    loaded = dist_checkpointing.load(sharded, str(path))
    load_model_state(chunks_of(state.model), loaded["model"], strict=True)
    require_finite_weights(state.model, path)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
        state.scheduler.load_state_dict(meta["scheduler"])
        state.step = meta["step"]
        state.consumed_samples = meta["consumed_samples"]
        rng_file = path / "rng" / f"rank{_rank()}.pt"
        if meta.get("world_size") == torch.distributed.get_world_size() and rng_file.is_file():
            try:  # weights_only: tensors and plain containers, never arbitrary pickled objects
                rng = torch.load(rng_file, weights_only=True)
            except Exception as exc:
                raise ConfigError(f"refused to load {rng_file}: it is not a plain tensor file "
                                  f"({type(exc).__name__}); the checkpoint may be tampered with "
                                  "or corrupt: resume from another one") from exc
            _set_rng_state(rng)
    return CheckpointInfo(path, meta["step"], meta["consumed_samples"], meta["tokens"], meta["kind"])
