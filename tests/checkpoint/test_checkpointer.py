"""The Checkpointer's finding, loading and cleaning on a run directory written the way it writes
one (write_checkpoint's staged directory and state file, `latest` moved last), with no model:
which checkpoint a run resumes from, which one it loads and how, what a save killed mid-way
leaves and what `clean_partial` removes; and that a run resolved after its launch's checks
verifies and resolves nothing again. A real save and load round trip: test_checkpointer_load.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from megatron_kd.checkpoint import checkpointer as checkpointer_module
from megatron_kd.checkpoint.checkpointer import Checkpointer, CheckpointInfo, checkpoint_record, write_checkpoint
from megatron_kd.checkpoint.refs import LATEST, STATE_FILE, read_state
from megatron_kd.config import load_config
from megatron_kd.files import write_text_atomic
from megatron_kd.training import resolve
from megatron_kd.training.resolve import CheckedLaunch, Teacher, resolve_run


class _KilledMidSave(Exception):
    pass


def _cfg(run_dir: Path, *overrides: str):
    return load_config("train/tiny-mock", [f"run.dir={run_dir}", *overrides])


def write_run_checkpoint(cfg, step: int, kind: str = "periodic", killed: bool = False) -> Path:
    """A checkpoint of `step` as Checkpointer.save writes it (a small file for the shards);
    `killed`: the process dies before the rename, leaving NAME.partial and `latest` as they were."""
    name = f"step_{step:07d}"

    def die_before_rename(point: str, _step: int) -> None:
        if point == "before_rename":
            raise _KilledMidSave

    def shards(stage: Path) -> None:
        (stage / "shard.bin").write_bytes(bytes([step]) * 64)

    record = checkpoint_record(cfg, kind, step=step, consumed_samples=step * cfg.train.global_batch_size)
    root = Path(cfg.run.dir) / "checkpoints"
    if killed:
        with pytest.raises(_KilledMidSave):
            write_checkpoint(root / name, cfg, record, shards, save_hook=die_before_rename)
        return root / f"{name}.partial"
    out = write_checkpoint(root / name, cfg, record, shards)
    write_text_atomic(root / LATEST, name)
    return out


def test_resume_point_is_the_newest_complete_checkpoint(tmp_path):
    cfg = _cfg(tmp_path / "run")
    ck = Checkpointer(cfg)
    assert ck.resume_point() is None  # no run directory yet
    write_run_checkpoint(cfg, 2)
    newest = write_run_checkpoint(cfg, 4)
    partial = write_run_checkpoint(cfg, 6, killed=True)
    assert partial.is_dir() and ck.resume_point() == newest  # a save that never completed is not one
    (ck.root / LATEST).unlink()  # a save killed while replacing: the most steps wins
    assert ck.resume_point() == newest
    no_resume = Checkpointer(_cfg(tmp_path / "run", "checkpoint.resume=false"))
    assert no_resume.latest() == newest and no_resume.resume_point() is None


def test_clean_partial_removes_only_saves_that_never_completed(tmp_path):
    cfg = _cfg(tmp_path / "run")
    ck = Checkpointer(cfg)
    assert ck.clean_partial() == []  # no run directory: nothing to do
    done = write_run_checkpoint(cfg, 2)
    partial = write_run_checkpoint(cfg, 4, killed=True)
    assert ck.clean_partial() == [partial]
    assert not partial.exists() and read_state(done)["step"] == 2
    assert sorted(p.name for p in ck.root.iterdir()) == [LATEST, done.name]
    assert ck.resume_point() == done and ck.clean_partial() == []


def test_load_restores_the_resume_point_whole_else_checkpoint_load_weights_only(tmp_path, monkeypatch):
    calls = []

    def load_checkpoint(path, state, load_optimizer=True):
        calls.append((path, load_optimizer))
        return CheckpointInfo(Path(path), 4, 16, 512, "periodic", resumed=load_optimizer)

    monkeypatch.setattr(checkpointer_module, "load_checkpoint", load_checkpoint)
    state = SimpleNamespace(step=0, consumed_samples=0)
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / STATE_FILE).write_text("{}")  # a checkpoint as resolve_checkpoint recognises one
    fresh = Checkpointer(_cfg(tmp_path / "run"))
    assert fresh.load(state, None) is None and calls == []  # from scratch: nothing loaded
    initial = Checkpointer(_cfg(tmp_path / "run", f"checkpoint.load={seed}"))
    info = initial.load(state, None)
    assert calls == [(seed, False)] and not info.resumed
    resumed = initial.load(state, tmp_path / "run" / "checkpoints" / "step_0000004")
    assert calls[-1] == (tmp_path / "run" / "checkpoints" / "step_0000004", True) and resumed.resumed
    assert (resumed.step, resumed.consumed_samples) == (4, 16) and (state.step, state.consumed_samples) == (0, 0)


def test_saves_record_the_resolved_config_and_no_other_run(tmp_path):
    cfg = _cfg(tmp_path / "run")
    ck = Checkpointer(cfg)
    padded = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, padded_vocab_size=1024))
    ck.use_resolved_config(padded)
    assert ck.cfg is padded
    other = dataclasses.replace(padded, train=dataclasses.replace(padded.train, lr=0.5))
    with pytest.raises(ValueError, match="beyond model.padded_vocab_size"):
        ck.use_resolved_config(other)


def test_a_checked_launch_is_neither_verified_nor_resolved_again(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path / "run")
    resume = write_run_checkpoint(cfg, 2)
    saved = dict(read_state(resume), padded_vocab_size=768)  # what the launch's verification read

    def no_second_look(*args, **kwargs):
        raise AssertionError("checked by the launch already")

    monkeypatch.setattr(resolve, "verify_checkpoint", no_second_look)
    monkeypatch.setattr(resolve, "resolve_teacher", no_second_look)
    ck = Checkpointer(cfg)
    run = resolve_run(cfg, ck, CheckedLaunch(verified={resume: saved}))
    assert run.resume_from == resume and run.cfg.model.padded_vocab_size == 768

    teacher_model = dataclasses.replace(cfg.model, padded_vocab_size=1024)
    kd = _cfg(tmp_path / "run", f"teacher.checkpoint={tmp_path / 'teacher'}", "kd.alpha=0.5")
    launch = CheckedLaunch(Teacher(tmp_path / "teacher", teacher_model), {resume: saved})
    run = resolve_run(kd, Checkpointer(kd), launch)
    assert run.teacher.checkpoint == tmp_path / "teacher" and run.teacher.model.padded_vocab_size == 1024
    assert run.cfg.model.padded_vocab_size == 1024  # the student takes the teacher's padding
    with pytest.raises(AssertionError, match="checked by the launch"):  # a checkpoint it did not verify
        resolve_run(cfg, ck, CheckedLaunch())


def test_a_teacher_no_launch_checked_is_checked_by_the_run(tmp_path, monkeypatch):
    checks = []

    def resolve_teacher(cfg, check=True):
        checks.append(check)
        return tmp_path / "teacher", cfg.model, {}

    monkeypatch.setattr(resolve, "resolve_teacher", resolve_teacher)
    kd = _cfg(tmp_path / "run", f"teacher.checkpoint={tmp_path / 'teacher'}", "kd.alpha=0.5")
    resolve_run(kd, resume=False)  # mkd analyze: no launch checked it
    resolve_run(kd, Checkpointer(kd), CheckedLaunch(teacher_checked=True))  # a rank of a checked launch
    assert checks == [True, False]
