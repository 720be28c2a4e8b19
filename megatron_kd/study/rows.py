"""One run as the study reads it: `RunRow`, a frozen record made in exactly two places, from a
sweep directory (sweep_dir.collect) and from a results table (table.read_table, the CSV that
table.write_table writes back). Every report, claim, compute and law reads runs through it by
attribute; a value known only after the rows are read (a cache's readers, a baseline's other
length) is a new row (`dataclasses.replace`), never a change to one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_EMPTY: Mapping = MappingProxyType({})


def frozen_losses(losses: Mapping | None) -> Mapping[str, float]:
    """{validation set: loss} as a read-only mapping (a row's losses are what was measured)."""
    return MappingProxyType(dict(losses or {}))


def frozen_curve(records) -> tuple[Mapping, ...]:
    """A validation curve (metrics.jsonl records with val/ losses, in order), each record read-only."""
    return tuple(MappingProxyType(dict(r)) for r in records or ())


@dataclass(frozen=True)
class RunRow:
    """One finished run: the point it ran (its grid coordinates), what it measured and what it cost."""

    name: str
    student: str
    val: Mapping[str, float]  # validation set -> final loss (nan: the run diverged)
    teacher: str | None = None  # None: a baseline
    alpha: float | None = None  # None with alpha_schedule or auto_ceiling
    alpha_schedule: str | None = None  # the schedule's label
    auto_ceiling: float | None = None  # a kd.auto run (α set by the run): its kd.alpha
    temperature: float | None = None
    kind: str | None = None
    top_k: int | None = None
    seed: int | None = None
    data_seed: int | None = None
    seed_varies: str | None = None  # what the seeds vary (a sweep's points say)
    student_tokens: int | None = None
    student_steps: int | None = None  # a student at one length of grid.steps
    baseline_steps: int | None = None  # a baseline at another length (grid baseline_steps)
    baseline_tokens: int | None = None  # set by compute.with_baseline_lengths: its own frontier point
    student_params: float | None = None
    student_nonembedding_params: float | None = None
    student_flops: float | None = None  # training FLOPs (the table's `flops` column)
    seq_length: int | None = None  # from a sweep's recipe; a table has no column for it
    teacher_model: str | None = None
    teacher_params: float | None = None  # 0: a teacher without a model (the unigram control)
    teacher_nonembedding_params: float | None = None
    teacher_tokens: float | None = None  # the teacher's pretraining tokens
    teacher_pass_flops: float | None = None  # its forward over this run's tokens, as if for this run alone
    teacher_pretrain_flops: float | None = None
    teacher_pass_shared_by: float | None = None  # runs sharing one pass (a cache's readers); None: 1
    teacher_cache: str | None = None
    cache_args: str | None = None
    teacher_val: Mapping[str, float] = field(default_factory=lambda: _EMPTY)  # the teacher's own losses
    curve: tuple[Mapping, ...] = ()  # validation records during training (a table has none)

    @property
    def is_auto(self) -> bool:
        """A kd.auto run: α set by the run, no fixed α."""
        return self.auto_ceiling is not None

    @property
    def is_control(self) -> bool:
        """A teacher of no parameters (the unigram): a control, not a teacher of the claims."""
        return bool(self.teacher) and self.teacher_params == 0

    @property
    def seed_key(self) -> tuple:
        """What a run shares with the baseline it is paired with: its seeds."""
        return (self.seed, self.data_seed)

    @property
    def point_key(self) -> tuple:
        """Its sweep point's coordinates: every grid axis (seeds pooled), and a baseline's length
        when it is not its student's KD length (compute.with_baseline_lengths); a kd.auto point's
        ceiling last."""
        key = (self.student, self.teacher, self.alpha, self.temperature, self.kind, self.top_k,
               self.alpha_schedule, self.baseline_tokens)
        return key + (("auto", self.auto_ceiling),) if self.is_auto else key

    def flop_columns(self) -> dict:
        """The columns models/flops.row_flop_params reads (that layer takes a row as a mapping)."""
        return {"student_tokens": self.student_tokens, "student_flops": self.student_flops,
                "teacher_pass_flops": self.teacher_pass_flops, "student_params": self.student_params,
                "teacher_params": self.teacher_params}
