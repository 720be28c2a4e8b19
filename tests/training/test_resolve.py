"""The config a run trains with is resolved once (training/resolve.py): the padded vocabulary
from the weights it resumes or starts from, the teacher's alignment, the resume point; the
recipe's config is left as it was."""

from __future__ import annotations

import dataclasses

import pytest

from megatron_kd.checkpoint.refs import LATEST, write_state
from megatron_kd.config import load_config
from megatron_kd.distill.teacher import aligned_padded_vocab
from megatron_kd.errors import ConfigError
from megatron_kd.training.resolve import resolve_run


def _checkpoint(path, padded: int, step: int = 2):
    path.mkdir(parents=True)
    write_state(path, {"step": step, "kind": "periodic", "tokens": step * 128, "consumed_samples": 4 * step,
                       "padded_vocab_size": padded})
    return path


def test_padded_vocabulary_comes_from_the_weights_and_the_input_is_not_changed(tmp_path):
    init = _checkpoint(tmp_path / "seed", padded=640)
    cfg = load_config("train/tiny-mock", [f"run.dir={tmp_path / 'run'}", f"checkpoint.load={init}"])
    before = dataclasses.asdict(cfg)
    run = resolve_run(cfg)
    assert run.cfg.model.padded_vocab_size == 640 and run.resume_from is None and run.teacher is None
    assert dataclasses.asdict(cfg) == before  # the recipe's config is untouched

    # a run with checkpoints resumes from its latest, whose padding wins over checkpoint.load's
    ckpts = tmp_path / "run" / "checkpoints"
    latest = _checkpoint(ckpts / "step_0000002", padded=768)
    (ckpts / LATEST).write_text("step_0000002")
    run = resolve_run(cfg)
    assert run.resume_from == latest and run.cfg.model.padded_vocab_size == 768
    assert resolve_run(cfg, resume=False).resume_from is None
    no_resume = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, resume=False))
    assert resolve_run(no_resume).cfg.model.padded_vocab_size == 640


def test_student_takes_the_teachers_padding():
    assert aligned_padded_vocab(512, 512, 2) == 512
    assert aligned_padded_vocab(512, 640, 2) == 640
    with pytest.raises(ConfigError, match="not divisible by parallel.tp=4"):
        aligned_padded_vocab(512, 642, 4)
