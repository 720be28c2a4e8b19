"""Slurm job values are checked before anything renders: `--time` in one of Slurm's formats,
positive counts, a warning signal Slurm can send (1..65535 s, before the limit) — for
`mkd slurm submit` and `mkd sweep --slurm` alike, and for JobSpec through the library."""

from __future__ import annotations

import pytest

from megatron_kd.cli.main import main
from megatron_kd.errors import ConfigError
from megatron_kd.slurm.submit import JobSpec, render

BAD = {
    "time_prose": (["--time", "forever and ever"], "argument --time: is not a Slurm time limit"),
    "time_minutes_99": (["--time", "10:99:00"], "minutes or seconds above 59"),
    "time_day_hours_30": (["--time", "1-30"], "hours above 23"),
    "gpus_negative": (["--gpus-per-node", "-8"], "a job needs --gpus-per-node >= 0, got -8"),
    "nodes_zero": (["--nodes", "0"], "a job needs --nodes >= 1, got 0"),
    "signal_negative": (["--signal-seconds", "-60"], "a job needs --signal-seconds from 1 to 65535"),
    "signal_too_big": (["--signal-seconds", "70000"], "from 1 to 65535, got 70000"),
    "cpus_negative": (["--cpus-per-task", "-2"], "a job needs --cpus-per-task >= 1, got -2"),
    "ntasks_zero": (["--ntasks-per-node", "0"], "a job needs --ntasks-per-node >= 1"),
    "signal_after_limit": (["--time", "5", "--signal-seconds", "300"], "is not below the --time limit 5"),
}


def one_error(capsys, run, text: str) -> None:
    try:
        rc = run()
    except SystemExit as e:  # argparse's errors exit from the parser
        rc = e.code
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if "error:" in line]
    assert rc == 2 and len(lines) == 1 and text in lines[0], out + err
    assert "Traceback" not in out + err and "#SBATCH" not in out + err


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_value_is_one_line_before_rendering(case, capsys, tmp_path):
    args, text = BAD[case]
    one_error(capsys, lambda: main(["slurm", "submit", "train/tiny-mock", f"run.dir={tmp_path}/r", "--dry-run",
                                    *args]), text)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["time_prose", "gpus_negative", "signal_negative", "cpus_negative"])
def test_sweep_slurm_refuses_before_writing_recipes(case, capsys, tmp_path):
    args, text = BAD[case]
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\nbase: train/tiny-mock\nout: {tmp_path / 'out'}\nbaseline: true\n")
    one_error(capsys, lambda: main(["sweep", str(spec), "--slurm", *args]), text)
    assert [p.name for p in tmp_path.iterdir()] == ["s.yaml"]


@pytest.mark.parametrize("value,seconds", [("30", 1800), ("30:15", 1815), ("04:00:00", 14400), ("2-12", 216000),
                                           ("1-02:03", 93780), ("1-02:03:04", 93784), ("UNLIMITED", float("inf")),
                                           ("infinite", float("inf")), ("0", float("inf"))])
def test_slurm_time_forms(value, seconds):
    from megatron_kd.slurm.submit import time_limit_seconds

    assert time_limit_seconds(value) == seconds


def test_good_values_render_and_a_bad_one_does_not(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["slurm", "submit", "train/tiny-mock", "--dry-run", "--time", "1-30"])
    assert "#SBATCH" not in capsys.readouterr().out
    assert main(["slurm", "submit", "train/tiny-mock", f"run.dir={tmp_path}/r", "--dry-run", "--time", "1-00:00:00",
                 "--gpus-per-node", "0", "--ntasks-per-node", "1", "--signal-seconds", "120"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --time=1-00:00:00" in out and "#SBATCH --signal=USR1@120" in out


@pytest.mark.parametrize("field,value,text", [("time", "soon", "is not a Slurm time limit"),
                                              ("gpus_per_node", -8, "--gpus-per-node must be an integer >= 0"),
                                              ("signal_seconds", -60, "--signal-seconds must be an integer >= 1"),
                                              ("cpus_per_task", -2, "--cpus-per-task must be an integer >= 1")])
def test_jobspec_values_checked_by_render(field, value, text):
    values = {"gpus_per_node": 0, "ntasks_per_node": 1, field: value}
    with pytest.raises(ConfigError) as e:
        render(JobSpec(recipe="train/tiny-mock", **values))
    assert text in str(e.value)


def test_streamed_points_start_once_the_cache_job_has_started(capsys, tmp_path):
    """`mkd sweep --slurm --stream S`: a point depends on its cache job with `after:` (it has
    started), not `afterok:`, and waits for shards up to S seconds; --stream alone is one line."""
    spec = dict(recipe="train/tiny-mock", overrides=[f"run.dir={tmp_path}/r", "teacher.cache_wait_s=600"],
                gpus_per_node=0, ntasks_per_node=1, dependency="41", dependency_kind="after")
    script, _ = render(JobSpec(**spec))
    assert "#SBATCH --dependency=after:41" in script and "teacher.cache_wait_s=600" in script
    assert "#SBATCH --dependency=afterok:41" in render(JobSpec(**(spec | {"dependency_kind": "afterok"})))[0]
    with pytest.raises(ConfigError, match="afterok or after"):
        render(JobSpec(**(spec | {"dependency_kind": "afterany"})))
    s = tmp_path / "s.yaml"
    s.write_text(f"name: s\nbase: train/tiny-mock\nout: {tmp_path / 'out'}\nbaseline: true\n")
    one_error(capsys, lambda: main(["sweep", str(s), "--local", "--stream", "60"]), "--stream SECONDS needs --slurm")
