"""Runs of the planted law of tests/study/test_law.py as the inputs `mkd fit` and `mkd advise`
read: a results table (one row per run) and a fitted law.json, for the tests of their input
checks."""

from __future__ import annotations

import csv
from pathlib import Path

from megatron_kd.study.law import FitPoint
from megatron_kd.study.law_io import fit_law, write_law
from megatron_kd.study.rows import RunRow
from megatron_kd.study.table import write_table
from tests.study.runrow import run_row
from tests.study.test_law import _runs as planted_runs


def table_rows(runs: list[FitPoint]) -> list[RunRow]:
    """`runs` as the report's rows: N the FLOP parameters their FLOPs columns say (6 N D, 2 N_T D),
    the parameter counts other numbers (total twice N, non-embedding N / 2)."""
    return [run_row(r.name, "s", student_params=r.N * 2, student_nonembedding_params=r.N / 2,
                    student_flops=6 * r.N * int(r.D), teacher_pass_flops=2 * 3e6 * int(r.D) if r.teacher_loss else None,
                    student_tokens=int(r.D), teacher=f"t{r.teacher_loss}" if r.teacher_loss else None,
                    teacher_params=3e6 if r.teacher_loss else None, alpha=r.alpha if r.teacher_loss else 0.0,
                    seed=1, data_seed=1, val={"indomain": r.loss},
                    teacher_val={"indomain": r.teacher_loss} if r.teacher_loss else {}) for r in runs]


def write_runs_table(path: Path, runs: list[FitPoint] | None = None) -> Path:
    write_table(path, table_rows(planted_runs() if runs is None else runs), ["indomain"])
    return path


def edit_cell(path: Path, run: str, column: str, value: str) -> None:
    """Set one cell of a table (the row of `run`), as a hand edit would."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    head = list(rows[0])
    for r in rows:
        if r["run"] == run:
            r[column] = value
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=head)
        w.writeheader()
        w.writerows(rows)


def write_fitted_law(path: Path, bootstrap: int = 20) -> Path:
    write_law(fit_law(planted_runs(), bootstrap=bootstrap, valid_set="indomain"), path)
    return path
