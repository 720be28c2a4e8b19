"""`mkd slurm submit` on a real Slurm (slurmctld + slurmd + munge on localhost): a KD job with
two gloo tasks runs to completion; a job past its time limit checkpoints on the warning signal,
requeues itself, resumes, and ends with the uninterrupted run's losses."""

import subprocess
import time

import pytest

from tests.conftest import corpus_overrides
from tests.distributed import REPO
from tests.helpers import MKD, env_with, mkd, read_metrics


def env_for(slurm):
    """The test environment with the client commands pointed at the local cluster."""
    return env_with(SLURM_CONF=slurm.env["SLURM_CONF"])


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.multiproc
def test_kd_job_with_two_tasks_runs_to_completion(slurm, text_corpus, tmp_path):
    env = env_for(slurm)
    teacher = tmp_path / "teacher"
    common = corpus_overrides(text_corpus) + ["train.seq_length=32", "logging.eval_samples=8"]
    mkd("train", "train/tiny-mock", *common, f"run.dir={teacher}", "train.steps=6", env=env, timeout=600)
    run = tmp_path / "student"
    r = mkd("slurm", "submit", "train/tiny-mock", *common, f"run.dir={run}", "train.steps=6",
            f"teacher.checkpoint={teacher}", "kd.alpha=0.5", "parallel.tp=2",
            "--gpus-per-node", "0", "--ntasks-per-node", "2", "--time", "10", env=env, timeout=600)
    job = r.stdout.split()[-1]
    assert slurm.wait(job, 300) == "COMPLETED", (run / "slurm").glob("*.out")
    log = next((run / "slurm").glob("slurm-*.out")).read_text()
    assert "finished with exit code 0" in log and "done: 6 steps" in log, log[-3000:]
    m = read_metrics(run)
    assert m[-1]["step"] == 6 and m[-1]["kd_loss"] > 0


@pytest.mark.slurm
@pytest.mark.slow
def test_time_limit_warning_checkpoints_requeues_and_resumes(slurm, tmp_path):
    env = env_for(slurm)
    # ~20 steps/s here. The first run (1-minute limit, warned 40 s before) is warned when
    # slurmctld's periodic check comes round: 20-80 s after its start, i.e. before step 1500.
    # The requeued run then gets a longer limit (as an operator would), so one restart finishes
    # the run. The uninterrupted reference runs meanwhile on the other core.
    steps = ["train.steps=1500", "logging.log_interval=500", "logging.eval_samples=8",
             "checkpoint.keep_last=1"]
    ref = tmp_path / "uninterrupted"
    ref_log = open(tmp_path / "uninterrupted.log", "w")
    reference = subprocess.Popen([*MKD, "train", "train/tiny-mock", *steps, f"run.dir={ref}"], cwd=REPO,
                                 env=env, stdout=ref_log, stderr=subprocess.STDOUT)
    run = tmp_path / "preempted"
    r = mkd("slurm", "submit", "train/tiny-mock", *steps, f"run.dir={run}",
            "--gpus-per-node", "0", "--ntasks-per-node", "1", "--time", "1", "--signal-seconds", "40",
            env=env, timeout=600)
    job = r.stdout.split()[-1]
    deadline = time.monotonic() + 300
    log_file = run / "slurm" / f"slurm-{job}.out"
    while "requeueing job" not in (log_file.read_text() if log_file.exists() else ""):
        assert time.monotonic() < deadline and slurm.job_state(job) not in ("FAILED", "CANCELLED"), \
            log_file.read_text()[-3000:] if log_file.exists() else "no job log"
        time.sleep(1)
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], env=slurm.env, check=True)
    assert slurm.wait(job, 600) == "COMPLETED"
    assert reference.wait(timeout=600) == 0, (tmp_path / "uninterrupted.log").read_text()[-3000:]
    log = log_file.read_text()
    assert "preemption signal SIGUSR1" in log and "requeueing job" in log, log[-4000:]
    assert "restart count 1" in log and "resumed from" in log
    a, b = read_metrics(ref), {x["step"]: x for x in read_metrics(run)}
    assert b[1500]["loss"] == pytest.approx(a[-1]["loss"], abs=1e-6)
    assert b[1500]["val/mock"] == pytest.approx(a[-1]["val/mock"], abs=1e-6)


def test_rendered_h100_scripts_carry_fp8_and_parse(tmp_path):
    for recipe in ("kd/paper-8b-to-1b", "train/llama3-1b-mock-h100"):
        r = mkd("slurm", "submit", recipe, "--nodes", "4", "--gpus-per-node", "8", "--partition",
                "h100; echo pwned", "--dry-run")
        script = r.stdout
        assert "fp8=hybrid recipe=delayed" in script and "NVTE_FP8_DPA_BWD=1" in script
        assert "#SBATCH --signal=USR1@300" in script and "#SBATCH --requeue" in script
        assert "--partition='h100; echo pwned'" in script  # quoted, never executed
        (tmp_path / "job.sbatch").write_text(script)
        subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], check=True)


def test_slurm_missing_and_fp8_without_te_are_clear_errors(tmp_path):
    r = mkd("slurm", "submit", "train/tiny-mock", f"run.dir={tmp_path / 'x'}", "--gpus-per-node", "0",
            "--ntasks-per-node", "1", env=env_with(PATH="/nonexistent"), check=False)
    assert r.returncode == 3 and "sbatch is not on PATH" in r.stderr
    r = mkd("train", "train/llama3-1b-mock-h100", f"run.dir={tmp_path / 'y'}", check=False)
    assert r.returncode == 3 and "needs Transformer Engine" in r.stderr


@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_streams_a_cache_from_a_teacher_the_sweep_trains(slurm, tmp_path):
    """`mkd sweep --slurm --stream S` on the real Slurm: the sweep's baseline is also its teacher,
    so its job goes first; the teacher's cache job waits for it (afterok), and the KD point starts
    once the cache job has started (after), reading the shards as they are written."""
    import yaml

    env = env_for(slurm)
    out = tmp_path / "out"
    teacher = {"name": "own-baseline", "checkpoint": str(out / "runs" / "student__baseline"),
               "cache": {"top_k": 8, "dtype": "fp16"}, "overrides": ["kd.top_k=8", "kd.other_bucket=true"]}
    sweep = {"name": "streamed", "base": "train/tiny-mock", "out": str(out), "baseline": True,
             "overrides": ["train.steps=8", "logging.eval_samples=8", "logging.log_interval=1"],
             "grid": {"teacher": [teacher], "alpha": [0.5]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    r = mkd("sweep", str(tmp_path / "s.yaml"), "--slurm", "--stream", "300", "--gpus-per-node", "0",
            "--ntasks-per-node", "1", "--time", "10", env=env, timeout=600)
    lines = r.stdout.splitlines()
    base_job = next(x for x in lines if "student__baseline: submitted" in x).split()[4]
    cache_job = next(x for x in lines if "cache job" in x).split("cache job ")[1].split()[0]
    kd_line = next(x for x in lines if "__a0.5: submitted" in x)
    assert f"once cache job {cache_job} has started" in kd_line, r.stdout
    kd_job = kd_line.split()[4]
    for job in (base_job, cache_job, kd_job):
        assert slurm.wait(job, 400) == "COMPLETED", r.stdout
    assert "--dependency" not in (out / "runs" / "student__baseline" / "slurm" / "job.sbatch").read_text()
    kd_run = next(p for p in (out / "runs").iterdir() if p.name.endswith("__a0.5"))
    # the cache job runs the recipe of the longest point reading it, in that point's directory
    assert f"--dependency=afterok:{base_job}" in (kd_run / "slurm" / "job-teacher-cache.sbatch").read_text()
    script = (kd_run / "slurm" / "job.sbatch").read_text()
    assert f"--dependency=after:{cache_job}" in script and "teacher.cache_wait_s=300" in script
    assert (out / "caches" / "own-baseline" / "COMPLETE").is_file()
    m = read_metrics(kd_run)
    assert m[-1]["step"] == 8 and m[-1]["kd_loss"] > 0
