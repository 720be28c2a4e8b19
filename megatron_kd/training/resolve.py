"""A run's configuration resolved once, before anything is built: the padded vocabulary its
weights have, and the teacher it learns from (a checkpoint and its model, or a cache). One pass
downward: the recipe's config goes in, a new config comes out (the input is not changed), and
nothing changes the result afterwards. Where it resumes from is the Checkpointer's to say; what
the launch's checks already resolved and verified (`CheckedLaunch`) is taken as it is.

The padded vocabulary is the one value a run cannot take from its recipe alone: resumed or
initial weights were saved with theirs, and a teacher's logits must be sharded like the
student's (the student takes the teacher's padding when they differ).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from megatron_kd.checkpoint.checkpointer import Checkpointer
from megatron_kd.checkpoint.refs import resolve_checkpoint, verify_checkpoint
from megatron_kd.config import padded_vocab
from megatron_kd.config.schema import ModelConfig, RunConfig
from megatron_kd.distill.cache import TeacherCache
from megatron_kd.distill.teacher import aligned_padded_vocab, resolve_teacher


@dataclass(frozen=True)
class Teacher:
    """What a KD run learns from: a teacher checkpoint and its model (online), or a cache."""

    checkpoint: Path | None = None
    model: ModelConfig | None = None  # its padded vocabulary is the student's
    cache: TeacherCache | None = None
    unigram: object = None  # teacher.unigram: log p over the real vocabulary (a float32 tensor)

    def describe(self) -> str:
        if self.cache is not None:
            return f"the teacher cache {self.cache.root} (top-k {self.cache.top_k})"
        if self.unigram is not None:
            return "the unigram teacher (data.train's token frequencies, add-one)"
        return f"{self.checkpoint} ({self.model.name})"


@dataclass(frozen=True)
class CheckedLaunch:
    """What a launch's checks found (training/preflight.py), handed to the run in the same
    process so that nothing is resolved or verified twice. The ranks that a checked launcher
    started (mkd train --nproc) know only that it checked: `CheckedLaunch(teacher_checked=True)`."""

    # teacher.checkpoint resolved and checked against the student (the padding its weights have;
    # resolve_run aligns it with the student's)
    teacher: Teacher | None = None
    verified: dict[Path, dict] = field(default_factory=dict)  # checkpoint -> its verified state
    teacher_checked: bool = False  # the teacher passed the launch's checks (resolved here unchecked)
    teacher_identity: dict | None = None  # what the launch's checks found the run learns from (None: not read)

    def checkpoint_state(self, path: Path) -> dict:
        """`path`'s state file, verified (every file whole and unchanged) by the launch or now."""
        known = self.verified.get(Path(path))
        return known if known is not None else verify_checkpoint(path)


@dataclass(frozen=True)
class ResolvedRun:
    cfg: RunConfig  # model.padded_vocab_size as the weights and the teacher need it
    resume_from: Path | None  # the Checkpointer's resume point (checkpoint.resume), or None
    teacher: Teacher | None  # None without KD
    # what its checkpoints record as its teacher (distill.teacher.teacher_identity), as the launch's
    # checks read it; None: not read yet (a rank the launcher started, a run without a launch)
    teacher_identity: dict | None = None


def resolve_run(cfg: RunConfig, checkpointer: Checkpointer | None = None, checked: CheckedLaunch | None = None,
                resume: bool = True) -> ResolvedRun:
    """`checkpointer`: the run's, which names its resume point (a job outside a launch gets one
    of its own); `resume=False` for jobs that never resume a run (analysis, tests). `checked`:
    what this launch's checks resolved (the teacher) and verified (the checkpoints); what it
    does not hold is checked here (the teacher: unless `checked.teacher_checked`)."""
    checked = checked or CheckedLaunch()
    resume_from = (checkpointer or Checkpointer(cfg)).resume_point() if resume else None
    model = cfg.model
    weights = resume_from or (resolve_checkpoint(cfg.checkpoint.load) if cfg.checkpoint.load else None)
    if weights is not None:  # built with the padded vocabulary the weights were saved with
        saved = checked.checkpoint_state(weights).get("padded_vocab_size")
        model = dataclasses.replace(model, padded_vocab_size=saved or model.padded_vocab_size)
    teacher, teacher_padded = _teacher(cfg, checked)
    if teacher is not None and teacher_padded is not None:
        tp = cfg.parallel.tp
        student_padded = padded_vocab(model, tp)
        both = aligned_padded_vocab(student_padded, teacher_padded, tp)
        if both != student_padded:
            model = dataclasses.replace(model, padded_vocab_size=both)
        if teacher.model is not None and teacher.model.padded_vocab_size != both:
            teacher = dataclasses.replace(teacher, model=dataclasses.replace(teacher.model, padded_vocab_size=both))
    return ResolvedRun(dataclasses.replace(cfg, model=model), resume_from, teacher, checked.teacher_identity)


def _teacher(cfg: RunConfig, checked: CheckedLaunch) -> tuple[Teacher | None, int | None]:
    """(the run's teacher, the padded vocabulary its logits have: None when it has no model)."""
    if cfg.teacher.cache:  # the teacher's outputs from the cache: no teacher model at all
        cache = TeacherCache(cfg.teacher.cache, cfg.teacher.cache_wait_s)  # waits for a streamed manifest
        cache.reader = _window_reader(cfg, cache.manifest)
        return Teacher(cache=cache), cache.manifest["teacher_padded_vocab"]
    if cfg.teacher.unigram:  # no model: a fixed distribution, sharded like the student's logits
        import torch

        from megatron_kd.distill.unigram import unigram_log_probs  # lazy: unigram runs only

        logp = unigram_log_probs(cfg.data.train, cfg.data.train_weights, cfg.model.vocab_size)
        return Teacher(unigram=torch.tensor(logp, dtype=torch.float32)), None
    if cfg.teacher.checkpoint:
        teacher = checked.teacher
        if teacher is None:
            ckpt, teacher_model, _ = resolve_teacher(cfg, check=not checked.teacher_checked)
            teacher = Teacher(ckpt, teacher_model)
        return teacher, padded_vocab(teacher.model, cfg.parallel.tp)
    return None, None


def _window_reader(cfg: RunConfig, m: dict):
    """This rank's registration in a windowed teacher cache (None for a cache without a window):
    every rank that reads rows registers (with PP only the last stage does), as its run."""
    import torch.distributed as dist

    from megatron_kd.distill.cache_window import Reader  # lazy: only runs from a windowed cache need it

    if not m.get("window"):
        return None
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Reader(Path(cfg.teacher.cache), Path(cfg.run.dir), m["shard_rows"], cfg.train.global_batch_size, rank)
