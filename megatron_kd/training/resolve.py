"""A run's configuration resolved once, before anything is built: where it resumes from, the
padded vocabulary its weights have, and the teacher it learns from (a checkpoint and its model,
or a cache). One pass downward: the recipe's config goes in, a new config comes out (the input
is not changed), and nothing changes the result afterwards.

The padded vocabulary is the one value a run cannot take from its recipe alone: resumed or
initial weights were saved with theirs, and a teacher's logits must be sharded like the
student's (the student takes the teacher's padding when they differ).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from megatron_kd.checkpoint.refs import latest_checkpoint, verify_checkpoint
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
class ResolvedRun:
    cfg: RunConfig  # model.padded_vocab_size as the weights and the teacher need it
    resume_from: Path | None  # the run's latest checkpoint (checkpoint.resume), or None
    teacher: Teacher | None  # None without KD


def resolve_run(cfg: RunConfig, check_teacher: bool = True, resume: bool = True) -> ResolvedRun:
    """`check_teacher=False` when this launch already checked the teacher (mkd train does, once,
    before the ranks start); `resume=False` for jobs that never resume a run (analysis, tests)."""
    root = Path(cfg.run.dir) / "checkpoints"
    resume_from = latest_checkpoint(root) if cfg.checkpoint.resume and resume else None
    model = cfg.model
    weights = resume_from or (Path(cfg.checkpoint.load) if cfg.checkpoint.load else None)
    if weights is not None:  # built with the padded vocabulary the weights were saved with
        saved = verify_checkpoint(weights).get("padded_vocab_size")
        model = dataclasses.replace(model, padded_vocab_size=saved or model.padded_vocab_size)
    teacher, teacher_padded = None, None
    if cfg.teacher.cache:  # the teacher's outputs from the cache: no teacher model at all
        cache = TeacherCache(cfg.teacher.cache, cfg.teacher.cache_wait_s)  # waits for a streamed manifest
        cache.reader = _window_reader(cfg, cache.manifest)
        teacher, teacher_padded = Teacher(cache=cache), cache.manifest["teacher_padded_vocab"]
    elif cfg.teacher.unigram:  # no model: a fixed distribution, sharded like the student's logits
        import torch

        from megatron_kd.distill.unigram import unigram_log_probs  # lazy: unigram runs only

        logp = unigram_log_probs(cfg.data.train, cfg.data.train_weights, cfg.model.vocab_size)
        teacher, teacher_padded = Teacher(unigram=torch.tensor(logp, dtype=torch.float32)), None
    elif cfg.teacher.checkpoint:
        ckpt, teacher_model, _ = resolve_teacher(cfg, check=check_teacher)
        teacher, teacher_padded = Teacher(ckpt, teacher_model), padded_vocab(teacher_model, cfg.parallel.tp)
    if teacher is not None and teacher_padded is not None:
        tp = cfg.parallel.tp
        student_padded = padded_vocab(model, tp)
        both = aligned_padded_vocab(student_padded, teacher_padded, tp)
        if both != student_padded:
            model = dataclasses.replace(model, padded_vocab_size=both)
        if teacher.model is not None and teacher.model.padded_vocab_size != both:
            teacher = dataclasses.replace(teacher, model=dataclasses.replace(teacher.model, padded_vocab_size=both))
    return ResolvedRun(dataclasses.replace(cfg, model=model), resume_from, teacher)


def _window_reader(cfg: RunConfig, m: dict):
    """This rank's registration in a windowed teacher cache (None for a cache without a window):
    every rank that reads rows registers (with PP only the last stage does), as its run."""
    import torch.distributed as dist

    from megatron_kd.distill.cache_window import Reader  # lazy: only runs from a windowed cache need it

    if not m.get("window"):
        return None
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Reader(Path(cfg.teacher.cache), Path(cfg.run.dir), m["shard_rows"], cfg.train.global_batch_size, rank)
