"""`mkd sweep --slurm` checks every flag and every point's config at the job's world size, and
renders every job, before the first sbatch: a bad value is one line with nothing submitted (a
corrected re-run would otherwise submit the jobs that went out before the refusal again)."""

import pytest
import yaml

import megatron_kd.slurm.submit as slurm
from megatron_kd.cli.main import main


@pytest.fixture
def sbatch_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(slurm, "require_sbatch", lambda: None)
    monkeypatch.setattr(slurm, "submit", lambda job: calls.append(job) or str(len(calls)))
    return calls


def _sweep(tmp_path, **extra) -> str:
    spec = {"name": "s", "base": "train/tiny-mock", "out": str(tmp_path / "out"), "baseline": True,
            "grid": {"teacher": [{"name": "t", "checkpoint": str(tmp_path / "t"), "cache": {"top_k": 8},
                                  "overrides": ["kd.top_k=8", "kd.other_bucket=true"]}], "alpha": [0.5]}} | extra
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "s.yaml")


CPU = ["--gpus-per-node", "0", "--ntasks-per-node", "1"]
BAD = {
    "stream_nan": (["--stream", "nan", *CPU], "--stream SECONDS needs --slurm and a finite SECONDS > 0 (got nan)"),
    "stream_inf": (["--stream", "inf", *CPU], "(got inf)"),
    "stream_negative": (["--stream", "-5", *CPU], "(got -5)"),
    "world_size": (["--gpus-per-node", "3"], "is not divisible by micro_batch_size x data-parallel size"),
    "no_tasks": (["--gpus-per-node", "0"], "a job needs --gpus-per-node >= 1 (or --ntasks-per-node"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_submits_no_job(tmp_path, capsys, sbatch_calls, case):
    args, text = BAD[case]
    rc = main(["sweep", _sweep(tmp_path), "--slurm", *args])
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if "error:" in line]
    assert rc == 2 and len(lines) == 1 and text in lines[0], out + err
    assert sbatch_calls == [] and "Traceback" not in out + err
    assert not (tmp_path / "out").exists()  # nothing written either


def test_a_good_sweep_submits_each_job_once_in_order(tmp_path, capsys, sbatch_calls):
    assert main(["sweep", _sweep(tmp_path), "--slurm", "--stream", "60", *CPU]) == 0
    kinds = [(j.command, j.dependency, j.dependency_kind) for j in sbatch_calls]
    assert kinds == [("train", None, "afterok"), ("teacher-cache", None, "afterok"), ("train", "2", "after")]
    out = capsys.readouterr().out
    assert "once cache job 2 has started" in out and out.count("submitted job") == 2
