"""The one owner of a run's checkpoints: how one is written (the staged directory, the state
file's format, the checksum manifest), which one a run resumes from, loading it, when a run saves,
and clearing saves that never completed. A launch builds one `Checkpointer` and hands it down.

Every checkpoint the package writes goes through `write_checkpoint`: a run's periodic, token
budget and final saves (`Checkpointer.save`), the seed checkpoint of `mkd init`, and a converted
Hugging Face model. Layout of RUN_DIR/checkpoints:
    step_0000100/        periodic (the last `keep_last` kept)
    tokens_5000000000/   a token-budget checkpoint (teacher zoo), always kept
    step_0000500/        final, always kept
    latest               name of the newest complete checkpoint (written last)
Each checkpoint holds megatron-core's sharded files, `mkd_state.json` (step, consumed samples,
tokens, kind, layout, padded vocabulary, tokenizer, every file's size and checksum; a KD run's
objective state per rank, `kd_objective`),
`config.yaml` (the config it was made with), the tokenizer file, and for a run's saves the
scheduler state and `rng/rank*.pt`. It is written into NAME.partial and renamed into place when
complete, so a process killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_kd.checkpoint.model_io import chunks_of, load_model_state, require_finite_weights, sharded_model_state
from megatron_kd.checkpoint.refs import (
    LATEST,
    STATE_FILE,
    latest_checkpoint,
    read_state,
    resolve_checkpoint,
    write_state,
)
from megatron_kd.checkpoint.safe_load import check_checkpoint_pickles
from megatron_kd.config import dump_config, padded_vocab
from megatron_kd.config.schema import RunConfig
from megatron_kd.config.validate import tokens_per_step
from megatron_kd.data.identity import run_data_identity
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic

log = logging.getLogger("megatron_kd.checkpoint")

# The distributed optimizer's state is saved in the format that loads at any DP/TP/PP.
_OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}

FULL_BELOW = 64 << 20  # bytes free: a write that failed with less left is taken for a full disk

# Called as save_hook(point, step) at "after_shards" and "before_rename" of every save: the
# kill-mid-save tests install one (training/faults.py); None in a normal run.
SaveHook = Callable[[str, int], None]


@dataclass(frozen=True)
class CheckpointInfo:
    """What a load restored, read from the checkpoint's state file."""

    path: Path
    step: int
    consumed_samples: int  # the data position the run continues from
    tokens: int
    kind: str
    resumed: bool = False  # the whole training state (optimizer, LR schedule, RNG); False: weights only
    state: dict = field(default_factory=dict, repr=False, compare=False)  # its state file, as read


def _barrier():
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _world() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def _gathered(value) -> list | None:
    """Collective: every rank's `value` (plain data), in rank order, on rank 0 (None elsewhere)."""
    if not torch.distributed.is_initialized():
        return [value]
    out = [None] * _world() if _rank() == 0 else None
    torch.distributed.gather_object(value, out, dst=0)
    return out


def sharded_state(model_chunks, optimizer=None, is_loading: bool = False) -> dict:
    """What dist_checkpointing saves: the model under "model", the optimizer beside it."""
    model_sd = sharded_model_state(chunks_of(model_chunks))
    state = {"model": model_sd}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata=dict(_OPTIM_METADATA))
    return state


def checkpoint_record(cfg: RunConfig, kind: str, *, step: int = 0, consumed_samples: int = 0,
                      tokenizer: dict | None = None, **extra) -> dict:
    """The state file's fields every checkpoint has (write_state adds the file manifest)."""
    return {"step": step, "consumed_samples": consumed_samples,
            "tokens": step * cfg.train.global_batch_size * cfg.train.seq_length, "kind": kind,
            "world_size": _world(),
            "parallel": {"tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "vpp": cfg.parallel.vpp},
            "padded_vocab_size": padded_vocab(cfg.model, cfg.parallel.tp), "tokenizer": tokenizer,
            **extra}


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


def _disk_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path).free < FULL_BELOW
    except OSError:
        return False


def write_checkpoint(out: Path, cfg: RunConfig, record: dict, write_shards: Callable[[Path], dict | None],
                     tokenizer_file: str | None = None, save_hook: SaveHook | None = None) -> Path:
    """Collective (every rank of the job). Writes checkpoint `out`: `write_shards(stage)` runs on
    every rank and writes the sharded files (and any extra ones) into OUT.partial, returning
    fields to add to the record (or None); then rank 0 writes config.yaml, the tokenizer file and
    the state file with every file's checksum, and renames OUT.partial to OUT (an existing OUT
    stays complete until the new one is in place). A failure removes the partial copy and
    leaves OUT as it was; a full disk is reported as one (ENOSPC)."""
    out = Path(out)
    partial, step = out.with_name(out.name + ".partial"), record["step"]
    if _rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)  # a save killed before it could clean up
        partial.mkdir(parents=True)
    _barrier()
    try:
        with _preemption_signals_deferred():
            extra = write_shards(partial) or {}
        if save_hook:
            save_hook("after_shards", step)
    except BaseException as exc:  # torch's CheckpointException is a BaseException
        # A failed write (a full disk) gives its space back: the half-written copy is useless.
        full = _disk_full(partial)
        shutil.rmtree(partial, ignore_errors=True)
        if full:  # megatron-core's writer workers report only "an error is caught", no errno
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(partial)) from exc
        raise
    _barrier()
    if _rank() == 0:
        try:
            dump_config(cfg, partial / "config.yaml")
            if tokenizer_file:
                shutil.copy2(tokenizer_file, partial / Path(tokenizer_file).name)
            write_state(partial, {**record, **extra})  # every file's size and checksum
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if save_hook:
            save_hook("before_rename", step)
        replaced = out.with_name(out.name + ".replaced")
        if out.exists():
            shutil.rmtree(replaced, ignore_errors=True)
            out.rename(replaced)
        partial.rename(out)
        shutil.rmtree(replaced, ignore_errors=True)
    _barrier()
    return out


def check_new_checkpoint_dir(out: Path, flag: str = "--out") -> None:
    """A standalone checkpoint (seed, conversion) goes to a new or empty directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{flag} {out} exists and is not an empty directory; choose a new one")


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


@dataclass(frozen=True)
class SaveDue:
    name: str
    kind: str  # periodic | budget | final


class Checkpointer:
    """A run's checkpoints, one object per launch: where they live, which one the run resumes from
    (`resume_point`), restoring it (`load`), when one is due (`due`, `due_at_end`), the save
    (`save`) and removing saves that never completed (`clean_partial`).

    The save policy is plain arithmetic on steps and discovery reads only the state files, so
    both are unit-tested without a model; `load` and `save` are collective."""

    def __init__(self, cfg: RunConfig, save_hook: SaveHook | None = None):
        self.cfg = cfg
        self.root = Path(cfg.run.dir) / "checkpoints"
        self.save_hook = save_hook
        self.per_step = tokens_per_step(cfg)
        self.last_periodic_step: int | None = None  # a stop at this step needs no second save
        self._data_identity: dict | None = None

    def use_resolved_config(self, cfg: RunConfig) -> None:
        """Record `cfg` in every later save: the run's config once training/resolve.py has given
        it the padded vocabulary its weights and teacher need, the one thing it may change (the
        resume point, which resolution reads, is found before it)."""
        unpadded = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, padded_vocab_size=self.cfg.model.padded_vocab_size))
        if unpadded != self.cfg:
            raise ValueError(f"the resolved config of {cfg.run.dir} differs from this run's beyond "
                             "model.padded_vocab_size; build a Checkpointer for it")
        self.cfg = cfg

    def data_identity(self) -> dict:
        """What this run's data holds (data/identity.py), recorded in every checkpoint so that a
        resume on data tokenized again is refused; computed once per run (the data does not
        change under a running job)."""
        if self._data_identity is None:
            self._data_identity = run_data_identity(self.cfg)
        return self._data_identity

    # --- discovery ----------------------------------------------------------------------
    def latest(self) -> Path | None:
        """The newest complete checkpoint of this run (what `latest` names), or None."""
        return latest_checkpoint(self.root)

    def resume_point(self) -> Path | None:
        """The checkpoint this run resumes from: its newest complete one, or None (no checkpoint
        yet, or checkpoint.resume=false). Looked up when asked: `--overwrite` may have removed
        the checkpoints since the last look."""
        return self.latest() if self.cfg.checkpoint.resume else None

    # --- loading ------------------------------------------------------------------------
    def load(self, state, resume_from: Path | None) -> CheckpointInfo | None:
        """Collective. Restores what the run starts from into `state`'s model, optimizer, LR
        schedule and RNG: `resume_from` (the resume point the run was resolved with) whole, else
        checkpoint.load's weights only, else nothing (None: a run from scratch). The data
        position is returned, not set: the caller starts `state` at `info.step`."""
        if resume_from is not None:
            info = load_checkpoint(resume_from, state)
            self._restore_objective(getattr(state, "kd_objective", None), info)
            log.info("resumed from %s at step %d (%d tokens)", resume_from, info.step, info.tokens)
            return info
        if self.cfg.checkpoint.load:
            info = load_checkpoint(resolve_checkpoint(self.cfg.checkpoint.load), state, load_optimizer=False)
            log.info("initial weights from %s (step %d)", self.cfg.checkpoint.load, info.step)
            return info
        return None

    def _restore_objective(self, objective, info: CheckpointInfo) -> None:
        """The KD objective's running state as this rank saved it (kd.auto's advantage trend:
        each rank keeps its own, from the micro-batches it saw), so a resumed run sets the same
        α as an uninterrupted one. At another world size or layout the rank that saved it may
        not exist: as with the RNG the run cannot continue exactly, and every rank takes the
        first saved state that has moved from a fresh objective's (a last pipeline stage's).
        A checkpoint without it (written before it was saved, or by a run without KD) resumes a
        kd.auto run with a warning, its trend started again from α = kd.alpha: refusing would
        strand runs saved before, and the trend forgets its start within a few steps."""
        if objective is None:
            return
        saved = info.state.get("kd_objective")
        if saved is None:
            if self.cfg.kd.auto.enabled:
                log.warning("checkpoint %s holds no KD objective state: kd.auto's advantage trend starts again "
                            "(alpha from kd.alpha=%g), so the run does not continue exactly as it would have",
                            info.path, self.cfg.kd.alpha)
            return
        saved_world = info.state.get("world_size", len(saved) if isinstance(saved, list) else None)
        if not isinstance(saved, list) or not saved or len(saved) != saved_world:
            raise ConfigError(f"checkpoint {info.path} is damaged: its kd_objective is not a list of states, one per "
                              f"rank of the {saved_world} that saved it; delete it to resume from an earlier one")
        par = self.cfg.parallel
        same = info.state.get("parallel") == {"tp": par.tp, "pp": par.pp, "vpp": par.vpp} and len(saved) == _world()
        fresh = objective.state_dict()
        mine = saved[_rank()] if same else next((s for s in saved if s != fresh), saved[0])
        try:  # every rank checks every entry, so a damaged one stops all ranks alike, not one
            for state in [*saved, mine]:
                objective.load_state_dict(state)
        except ValueError as exc:
            raise ConfigError(f"checkpoint {info.path}: {exc}") from exc

    # --- policy -------------------------------------------------------------------------
    def due(self, step: int, total: int, preempted: bool = False) -> list[SaveDue]:
        """The saves after `step` of `total`: each token budget first crossed at this step,
        then a periodic one (interval, or preemption) unless this is the last step, which the
        end-of-run save covers."""
        ck = self.cfg.checkpoint
        before, now = (step - 1) * self.per_step, step * self.per_step
        saves = [SaveDue(f"tokens_{b}", "budget") for b in sorted(set(ck.save_at_tokens)) if before < b <= now]
        if step != total and (preempted or (ck.save_interval and step % ck.save_interval == 0)):
            saves.append(SaveDue(_step_name(step), "periodic"))
        return saves

    def due_at_end(self, step: int, start_step: int, total: int) -> SaveDue | None:
        """After the loop: a run stopped early (stop_at_step, preemption) always leaves a
        checkpoint to resume from (unless one was just written at this step); a finished run saves its final
        one (checkpoint.save_at_end); nothing when no step ran."""
        if step == start_step:
            return None
        if step < total:
            return None if step == self.last_periodic_step else SaveDue(_step_name(step), "periodic")
        return SaveDue(_step_name(step), "final") if self.cfg.checkpoint.save_at_end else None

    # --- writing ------------------------------------------------------------------------
    def save(self, state, due: SaveDue, tokenizer_file: str | None) -> Path:
        """Collective. Writes RUN_DIR/checkpoints/NAME (model, optimizer, scheduler, RNG, data
        position) and moves `latest` to it."""
        from megatron.core import dist_checkpointing

        def write_shards(stage: Path) -> None:
            dist_checkpointing.save(sharded_state(state.model, state.optimizer), str(stage))
            (stage / "rng").mkdir(exist_ok=True)
            torch.save(_rng_state(), stage / "rng" / f"rank{_rank()}.pt")

        objective = getattr(state, "kd_objective", None)
        extra = {} if objective is None else {"kd_objective": _gathered(objective.state_dict())}
        record = checkpoint_record(self.cfg, due.kind, step=state.step, consumed_samples=state.consumed_samples,
                                   tokenizer=state.tokenizer_info, scheduler=state.scheduler.state_dict(),
                                   teacher=state.teacher_identity,
                                   data=self.data_identity() if _rank() == 0 else None,  # rank 0 writes it
                                   **extra)
        final = write_checkpoint(self.root / due.name, self.cfg, record, write_shards, tokenizer_file, self.save_hook)
        if _rank() == 0:
            write_text_atomic(self.root / LATEST, due.name)
            self._prune()
        _barrier()
        if due.kind == "periodic":
            self.last_periodic_step = state.step
        log.info("saved checkpoint %s (step %d, %s)", final, state.step, due.kind)
        return final

    def clean_partial(self) -> list[Path]:
        """Delete NAME.partial directories, saves that never completed (the process died
        mid-save; the checkpoint they were to replace is intact), and return them. One rank's
        job, before the run resolves its resume point."""
        removed = sorted(self.root.glob("*.partial")) if self.root.is_dir() else []
        for p in removed:
            log.warning("removing %s: a save that did not complete", p)
            shutil.rmtree(p, ignore_errors=True)
        return removed

    def _prune(self) -> None:
        periodic = sorted((p for p in self.root.iterdir() if p.is_dir() and (p / STATE_FILE).is_file()
                           and read_state(p)["kind"] == "periodic"), key=lambda p: read_state(p)["step"])
        latest = self.latest()
        for p in periodic[:-self.cfg.checkpoint.keep_last]:
            if p != latest:
                shutil.rmtree(p)


def _step_name(step: int) -> str:
    return f"step_{step:07d}"


def load_checkpoint(path: Path, state, load_optimizer: bool = True) -> CheckpointInfo:
    """Collective. Restores `path` into `state`'s model (any saved TP/PP) and, with
    `load_optimizer`, its optimizer and LR schedule, and the RNG when the world size is the one
    it was saved with. `state.step` and the data position are left to the caller (returned)."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    meta = read_state(path)
    check_checkpoint_pickles(path)  # before megatron-core unpickles anything in it
    optimizer = state.optimizer if load_optimizer else None
    loaded = dist_checkpointing.load(sharded_state(state.model, optimizer, is_loading=True), str(path))
    load_model_state(chunks_of(state.model), loaded["model"], strict=True)
    require_finite_weights(state.model, path)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
        state.scheduler.load_state_dict(meta["scheduler"])
        rng_file = path / "rng" / f"rank{_rank()}.pt"
        if meta.get("world_size") == _world() and rng_file.is_file():
            try:  # weights_only: tensors and plain containers, never arbitrary pickled objects
                rng = torch.load(rng_file, weights_only=True)
            except Exception as exc:
                raise ConfigError(f"refused to load {rng_file}: it is not a plain tensor file "
                                  f"({type(exc).__name__}); the checkpoint may be tampered with "
                                  "or corrupt: resume from another one") from exc
            _set_rng_state(rng)
    return CheckpointInfo(path, meta["step"], meta["consumed_samples"], meta["tokens"], meta["kind"],
                          resumed=optimizer is not None, state=meta)
