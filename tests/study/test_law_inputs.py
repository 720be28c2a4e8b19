"""`mkd fit`'s inputs: a source given twice (the same path, another spelling of it, a copy) or a
run in two sources is refused (its runs would count twice and narrow every interval); every
number of a run and every flag is finite and in range where it enters. Each refusal is one
line naming the problem, exit 2, no traceback, and no law written."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from megatron_kd.errors import ConfigError
from megatron_kd.study.law_io import check_row
from megatron_kd.study.rows import frozen_losses
from tests.helpers import mkd_in_process
from tests.study.law_data import edit_cell, planted_runs, write_runs_table
from tests.study.runrow import run_row

SUPERVISED_RUN, KD_RUN = "s100000-1e+06", "kd100000-3e+06-2.63"


@pytest.fixture
def table(tmp_path):
    return write_runs_table(tmp_path / "runs.csv")


def _refused(capsys, *args) -> str:
    rc, out, err = mkd_in_process(capsys, "fit", *args)
    assert rc == 2 and "Traceback" not in err, (rc, out, err)
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_the_same_table_twice_is_refused(table, tmp_path, capsys, monkeypatch):
    out = tmp_path / "law.json"
    assert "is given twice" in _refused(capsys, table, table, "--out", out)
    monkeypatch.chdir(tmp_path)  # another spelling of the same path
    assert "is given twice" in _refused(capsys, "runs.csv", f"./x/../{table.name}", "--out", out)
    (tmp_path / "link.csv").symlink_to(table)
    assert "is given twice" in _refused(capsys, table, tmp_path / "link.csv", "--out", out)
    assert not out.exists()


def test_a_copy_of_a_table_is_refused(table, tmp_path, capsys):
    copy = tmp_path / "copy.csv"
    shutil.copy(table, copy)
    err = _refused(capsys, table, copy, "--out", tmp_path / "law.json")
    assert "has the same content as" in err and str(table) in err
    assert not (tmp_path / "law.json").exists()


def test_a_run_in_two_tables_is_refused_by_name(tmp_path, capsys):
    runs = planted_runs()
    first = write_runs_table(tmp_path / "a.csv", runs[:30])
    second = write_runs_table(tmp_path / "b.csv", runs[29:])  # one run in both
    err = _refused(capsys, first, second, "--out", tmp_path / "law.json")
    assert f"run {runs[29].name!r} is in {first} and in {second}" in err, err


def test_tables_that_share_no_run_fit_together(tmp_path, capsys):
    runs = planted_runs()
    first = write_runs_table(tmp_path / "a.csv", runs[:30])
    second = write_runs_table(tmp_path / "b.csv", runs[30:])
    rc, out, err = mkd_in_process(capsys, "fit", first, second, "--out", tmp_path / "law.json", "--bootstrap", 0)
    assert rc == 0 and "supervised law (16 runs" in out, err


# (run, column, cell): each a value the fit must not take as a number of a run
BAD_CELLS = [
    (SUPERVISED_RUN, "student_nonembedding_params", "-100000"),
    (SUPERVISED_RUN, "student_nonembedding_params", "0"),
    (SUPERVISED_RUN, "student_params", "-5"),
    (SUPERVISED_RUN, "student_params", "1e300"),  # 6 N D would overflow
    (SUPERVISED_RUN, "student_tokens", "-1000"),
    (KD_RUN, "teacher_params", "-3e6"),
    (KD_RUN, "teacher_tokens", "-1"),
    (KD_RUN, "alpha", "5"),
    (KD_RUN, "alpha", "-0.5"),
    (KD_RUN, "teacher_pass_shared_by", "0"),
    (KD_RUN, "teacher_pass_flops", "-1e12"),
    (KD_RUN, "teacher_pretrain_flops", "-1e12"),
    (SUPERVISED_RUN, "flops", "-1e12"),
    (KD_RUN, "temperature", "0"),
    (SUPERVISED_RUN, "seed", "-1"),
    (SUPERVISED_RUN, "data_seed", "4294967296"),
    (SUPERVISED_RUN, "val/indomain", "-2.5"),
    (SUPERVISED_RUN, "val/indomain", "0"),
    (SUPERVISED_RUN, "val/indomain", "nan"),
    (SUPERVISED_RUN, "val/indomain", "inf"),
    (KD_RUN, "teacher_val/indomain", "-inf"),
    (KD_RUN, "teacher_val/indomain", "-1"),
    (SUPERVISED_RUN, "student_params", "0.5"),  # a student has at least one parameter
    (KD_RUN, "temperature", "1e29"),
    (SUPERVISED_RUN, "data_seed", "1e29"),
]


@pytest.mark.parametrize("run,column,cell", BAD_CELLS, ids=[f"{c}={v}" for _, c, v in BAD_CELLS])
def test_a_number_out_of_range_is_refused_naming_the_run_and_column(table, tmp_path, capsys, run, column, cell):
    edit_cell(table, run, column, cell)
    err = _refused(capsys, table, "--out", tmp_path / "law.json")
    field = {"flops": "student_flops"}.get(column, column)
    assert field in err or column in err, err
    assert not (tmp_path / "law.json").exists()


def test_a_sweeps_rows_are_checked_as_a_tables_are():
    """A sweep directory's rows (sweep_dir.collect) go through the same check: a JSON value that
    is not a number, or a loss that is not a number, is one line."""
    row = run_row("r", student_params=1e6, val={"indomain": 3.0})
    check_row(row, "sweep")
    for bad in ({"alpha": "0.5"}, {"alpha": True}, {"student_tokens": float("nan")},
                {"teacher_val": frozen_losses({"indomain": "x"})}, {"student_params": 10**400}):
        with pytest.raises(ConfigError, match=r"sweep: run 'r' "):
            check_row(replace(row, **bad), "sweep")


BAD_FLAGS = [
    (["--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    (["--seed", str(2**32)], "--seed must be in"),
    (["--max-tokens", "nan"], "--max-tokens is not a number"),
    (["--max-tokens", "inf"], "--max-tokens is inf"),
    (["--max-tokens", "-5"], "--max-tokens must be"),
    (["--max-tokens", "0"], "--max-tokens must be"),
    (["--bootstrap", "-1"], "--bootstrap must be in"),
    (["--bootstrap", "1000000000"], "--bootstrap must be in"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_a_flag_out_of_range_is_refused(table, tmp_path, capsys, flags, message):
    err = _refused(capsys, table, "--out", tmp_path / "law.json", *flags)
    assert message in err, err
    assert not (tmp_path / "law.json").exists()


def test_a_run_without_tokens_is_one_line(table, tmp_path, capsys):
    edit_cell(table, SUPERVISED_RUN, "student_tokens", "")
    assert "has no student_tokens" in _refused(capsys, table, "--out", tmp_path / "law.json")


def test_a_run_whose_flop_parameters_are_unknown_is_one_line(table, tmp_path, capsys):
    """N is a run's FLOP parameters (its FLOPs column, else its total parameters): a row with
    neither, or a teacher with neither its pass's FLOPs nor its parameters, is refused in one line."""
    edit_cell(table, SUPERVISED_RUN, "flops", "")
    edit_cell(table, SUPERVISED_RUN, "student_params", "")
    assert "has neither a FLOPs column (flops) nor student_params" in _refused(capsys, table, "--out",
                                                                                 tmp_path / "law.json")
    table = write_runs_table(tmp_path / "kd.csv")
    edit_cell(table, KD_RUN, "teacher_pass_flops", "")
    edit_cell(table, KD_RUN, "teacher_params", "")
    assert "no teacher_pass_flops with the student's tokens, nor teacher_params" in _refused(
        capsys, table, "--out", tmp_path / "law.json")


def test_a_seq_length_the_runs_were_not_at_is_refused():
    from megatron_kd.study.law_io import seq_length_of

    rows = [run_row(seq_length=128), run_row(seq_length=128)]
    assert seq_length_of(rows) == (128, []) and seq_length_of(rows, 128) == (128, [])
    with pytest.raises(ConfigError, match="--seq-length 256: the sweeps' runs were at 128"):
        seq_length_of(rows, 256)
    assert seq_length_of([run_row()])[0] is None and "pass --seq-length S" in seq_length_of([run_row()])[1][0]
    assert seq_length_of([run_row(seq_length=64), run_row(seq_length=128)])[0] is None


def test_a_sweeps_loss_past_any_measurement_is_refused():
    """A sweep row's loss of 1e308 is refused as a table's is (at most 1e6 nats)."""
    row = run_row("r", student_params=1e6, val={"indomain": 1e308})
    with pytest.raises(ConfigError, match=r"val/indomain must be in \(0, 1000000\]"):
        check_row(row, "sweep")
