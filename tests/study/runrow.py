"""Hand-made RunRows for the study's tests: a row of one run with every field it does not name
left at its default (a baseline of student `s`), its losses and curve frozen as the readers'."""

from __future__ import annotations

from megatron_kd.study.rows import RunRow, frozen_curve, frozen_losses


def run_row(name: str = "r", student: str = "s", val: dict | None = None, teacher_val: dict | None = None,
            curve: list | None = None, **fields) -> RunRow:
    return RunRow(name=name, student=student, val=frozen_losses(val), teacher_val=frozen_losses(teacher_val),
                  curve=frozen_curve(curve), **fields)
