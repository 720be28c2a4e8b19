"""What `mkd fit --out` and `mkd advise --write-recipes` may write over: never an input, never a
file they did not write (fit: unless --overwrite; advise: not even then), and everything checked
before anything is written. The recipes advise writes carry every path as given: a directory
named with YAML's special characters is that directory, not a comment or a list."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from megatron_kd.config import load_config
from megatron_kd.errors import ConfigError
from megatron_kd.study.advise import Option
from megatron_kd.study.advise_recipes import write_recipes
from megatron_kd.study.law_io import check_out
from tests.helpers import mkd_in_process
from tests.study.law_data import write_fitted_law, write_runs_table

SMALL, MEDIUM = "models/cpu-small", "models/cpu-medium"
SMALL_N, MEDIUM_N = 1115136.0, 3123456.0  # cpu-small, cpu-medium in FLOP parameters at 128 tokens
SUPERVISED = Option("supervised", None, SMALL_N, 2e6, None, None, 3.0, None, {})
EXISTING = Option("existing teacher", 1.0, SMALL_N, 2e6, 3e6, None, 3.0, None, {})
TRAINED = Option("train a teacher", 0.5, SMALL_N, 2e6, MEDIUM_N, 3e6, 3.0, None, {})


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def law_file(tmp_path_factory):
    return write_fitted_law(tmp_path_factory.mktemp("law") / "law.json")


# --- mkd fit --out ---------------------------------------------------------------------------------

def test_fit_never_writes_over_its_input(tmp_path, capsys, monkeypatch):
    table = write_runs_table(tmp_path / "x.csv")
    before = _digest(table)
    for out, extra in ((table, []), (table, ["--overwrite"])):
        rc, _, err = mkd_in_process(capsys, "fit", table, "--out", out, "--bootstrap", 0, *extra)
        assert rc == 2 and "is the input" in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.chdir(tmp_path)  # the same file spelled another way
    rc, _, err = mkd_in_process(capsys, "fit", "x.csv", "--out", "./sub/../x.csv", "--overwrite")
    assert rc == 2 and "is the input" in err
    assert _digest(table) == before


def test_fit_replaces_an_earlier_law_but_another_file_only_with_overwrite(tmp_path, capsys):
    table = write_runs_table(tmp_path / "runs.csv")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    rc, _, err = mkd_in_process(capsys, "fit", table, "--out", notes, "--bootstrap", 0)
    assert rc == 2 and "exists and is not a law written by `mkd fit`" in err and "--overwrite" in err, err
    assert notes.read_text() == "my notes\n"
    law = tmp_path / "law.json"
    for _ in range(2):  # the second run replaces the first's law, no flag needed
        rc, out, err = mkd_in_process(capsys, "fit", table, "--out", law, "--bootstrap", 0)
        assert rc == 0 and f"law written to {law}" in out, err
    rc, _, err = mkd_in_process(capsys, "fit", table, "--out", notes, "--bootstrap", 0, "--overwrite")
    assert rc == 0 and '"format": "megatron_kd.law/1"' in notes.read_text(), err
    (tmp_path / "d").mkdir()
    rc, _, err = mkd_in_process(capsys, "fit", table, "--out", tmp_path / "d", "--bootstrap", 0)
    assert rc == 2 and "is a directory or a link" in err


def test_fit_keeps_off_the_files_of_an_input_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "points.json").write_text("[]")
    with pytest.raises(ConfigError, match="is a file of the input sweep"):
        check_out(str(sweep / "points.json"), [str(sweep)], overwrite=True)
    assert check_out(str(sweep / "law.json"), [str(sweep)], overwrite=False) == sweep / "law.json"


def test_fit_help_names_overwrite(capsys):
    for command in ("fit", "advise"):
        with pytest.raises(SystemExit):
            mkd_in_process(capsys, command, "--help")
        assert "--overwrite" in capsys.readouterr().out


# --- mkd advise --write-recipes --------------------------------------------------------------------

def test_advise_never_replaces_a_file_it_did_not_write(law_file, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    mine = out / "student.yaml"
    mine.write_text("# my own recipe\n")
    common = ["--flops", 6e13, "--student-recipe", SMALL, "--base", "kd/_cpu_base", "--write-recipes", out]
    for extra in ([], ["--overwrite"]):
        rc, _, err = mkd_in_process(capsys, "advise", law_file, *common, *extra)
        assert rc == 2 and "was not written by `mkd advise --write-recipes`" in err, err
        assert mine.read_text() == "# my own recipe\n"


def test_advise_replaces_its_own_recipes_only_with_overwrite(law_file, tmp_path, capsys):
    out = tmp_path / "r"
    common = ["--flops", 6e13, "--student-recipe", SMALL, "--base", "kd/_cpu_base", "--write-recipes", out]
    rc, _, err = mkd_in_process(capsys, "advise", law_file, *common)
    assert rc == 0 and (out / "student.yaml").is_file(), err
    rc, _, err = mkd_in_process(capsys, "advise", law_file, *common)
    assert rc == 2 and "pass --overwrite to replace it" in err, err
    rc, _, err = mkd_in_process(capsys, "advise", law_file, *common, "--overwrite")
    assert rc == 0, err
    rc, _, err = mkd_in_process(capsys, "advise", law_file, "--flops", 6e13, "--overwrite")
    assert rc == 2 and "--overwrite replaces recipes written by --write-recipes DIR" in err


def test_advise_checks_every_target_before_writing_any(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "kd.yaml").write_text("someone's\n")
    with pytest.raises(ConfigError, match="kd.yaml exists and was not written"):
        write_recipes(TRAINED, out, "kd/_cpu_base", {SMALL: SMALL_N}, {MEDIUM: MEDIUM_N}, None, overwrite=True)
    assert not (out / "teacher.yaml").exists() and (out / "kd.yaml").read_text() == "someone's\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file; give a directory"):
        write_recipes(SUPERVISED, tmp_path / "file", "kd/_cpu_base", {SMALL: SMALL_N}, {}, None)


HOSTILE = [" #1", "a: b", "{x", "[y", "-lead", "&anchor", "*alias", "!tag", "'single'", '"double"', "null",
           "1e-06", "%j $(id)", "? q", "| block"]  # (a leading ~ is refused by run.dir's own check)


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_directory_name_is_the_directory_written(tmp_path, monkeypatch, name):
    """Relative paths, so the special character leads the value (`[y/runs/student`)."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "abs" / f"dir{name}"
    path, = write_recipes(SUPERVISED, out, "kd/_cpu_base", {SMALL: SMALL_N}, {}, None)
    assert load_config(path).run.dir == str(out / "runs" / "student")
    relative = Path(name.strip())
    kd = load_config(write_recipes(EXISTING, relative, "kd/_cpu_base", {SMALL: SMALL_N}, {}, name)[0])
    assert kd.teacher.checkpoint == name and kd.run.dir == str(relative / "runs" / "kd")
    t_path, k_path = write_recipes(TRAINED, out, "kd/_cpu_base", {SMALL: SMALL_N}, {MEDIUM: MEDIUM_N}, None)
    assert load_config(k_path).teacher.checkpoint == load_config(t_path).run.dir == str(out / "runs" / "teacher")


def test_a_line_break_in_a_path_is_refused_with_nothing_written(tmp_path):
    with pytest.raises(ConfigError, match="has a line break in it"):
        write_recipes(EXISTING, tmp_path / "r", "kd/_cpu_base", {SMALL: SMALL_N}, {}, "/ckpt\n/other")
    with pytest.raises(ConfigError, match="has a line break in it"):
        write_recipes(SUPERVISED, tmp_path / "a\nb", "kd/_cpu_base", {SMALL: SMALL_N}, {}, None)
    assert list(tmp_path.iterdir()) == []


def test_advise_writes_hostile_names_through_the_command(law_file, tmp_path, capsys):
    out, ckpt = tmp_path / "DIR #1", tmp_path / "teacher: #2"
    rc, _, err = mkd_in_process(capsys, "advise", law_file, "--flops", 6e13, "--student-recipe", SMALL, "--base",
                                "kd/_cpu_base", "--teacher", 3e6, 2.65, "--teacher-checkpoint", ckpt,
                                "--write-recipes", out)
    assert rc == 0, err
    kd = load_config(out / "kd.yaml")
    assert kd.run.dir == str(out / "runs" / "kd") and kd.teacher.checkpoint == str(ckpt)
