"""A local sweep's progress line (study/sweep_progress.py) from fake job logs and a fake clock, its
thread, and the jobs run_followed runs beside it (study/sweep.py). No job runs: fast."""

import os
import time

import pytest

from megatron_kd.console import NOTICES_SHOWN_ENV
from megatron_kd.study import sweep as sw
from megatron_kd.study import sweep_local
from megatron_kd.study.jobs import Job
from megatron_kd.study.sweep_progress import (
    JobsProgress,
    Position,
    following,
    last_position,
    progress_line,
    shared_prefix,
)

STEP = "12:00:00 step {i}/{n} | tokens 1 | loss (train CE) 5.0 | lr 1e-3 | grad norm 1 | 9 tok/s | ETA 0:00:09\n"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _logs(tmp_path, names):
    return [(n, tmp_path / f"{n}.log") for n in names]


def test_the_last_step_or_cache_micro_batch_a_log_reports(tmp_path):
    log = tmp_path / "train.log"
    assert last_position(log) is None  # not started
    log.write_text("12:00:00 distilling from x\n")
    assert last_position(log) is None
    log.write_text(STEP.format(i=20, n=80) + "12:00:05 validation at step 20: indomain 5.1\n" + STEP.format(i=40, n=80))
    assert last_position(log) == Position("step", 40, 80)
    cache = tmp_path / "cache.log"
    cache.write_text("12:00:00 teacher cache: micro-batch 7/30 (shard 1/2) | ETA 0:01:00\n")
    assert str(last_position(cache)) == "micro-batch 7/30"


def test_a_line_when_due_with_each_running_jobs_step_and_the_eta(tmp_path):
    clock = Clock()
    jobs = _logs(tmp_path, ["a", "b", "c"])
    p = JobsProgress("runs", jobs, lanes=2, done_before=1, total=4, clock=clock, every=30)
    clock.t += 29
    assert p.poll() is None  # not due yet
    jobs[0][1].write_text(STEP.format(i=20, n=80))  # a: 30 s for a quarter: 90 s left
    jobs[1][1].write_text(STEP.format(i=40, n=80))  # b: 30 s for half: 30 s left
    clock.t += 1
    line = p.poll()
    # c waits for a lane: the mean run (120 s and 60 s: 90 s) after it; (90 + 30 + 90) / 2 lanes
    assert line == "[sweep] runs 1/4 done | running: a step 20/80, b step 40/80 | ETA 0:01:45"
    assert p.poll() is None  # one line per period


def test_a_finished_job_restarts_the_quiet_timer_and_its_lane_starts_the_next(tmp_path):
    clock = Clock()
    jobs = _logs(tmp_path, ["a", "b", "c"])
    p = JobsProgress("runs", jobs, lanes=2, clock=clock, every=30)
    clock.t += 20
    p.finished("a")  # its own line was printed: no progress line for 30 s
    clock.t += 29
    assert p.poll() is None
    clock.t += 1
    jobs[2][1].write_text(STEP.format(i=10, n=40))  # c took a's lane 30 s ago: 120 s a run
    line = p.poll()
    assert line.startswith("[sweep] runs 1/3 done | running: b (starting), c step 10/40 | ETA ")
    assert line.endswith("0:01:30")  # c's own rate: 90 s left; b is at the 20 s a finished run took


def test_no_step_yet_says_so(tmp_path):
    assert progress_line("teacher caches", 0, 2, [("x", None)], None) == (
        "[sweep] teacher caches 0/2 done | running: x (starting) | ETA once a job reports a step")


def test_the_line_leaves_off_the_student_every_point_name_shares(tmp_path):
    assert shared_prefix(["cpu-small__baseline", "cpu-small__t-tiny@205K__a0.5"]) == "cpu-small__"
    assert shared_prefix(["small__t-a__a1", "small__t-a__a0.5"]) == "small__t-a__"
    assert shared_prefix(["cache tiny@205K"]) == shared_prefix(["ab", "ac"]) == ""
    clock = Clock()
    p = JobsProgress("runs", _logs(tmp_path, ["s__baseline", "s__t-x__a1"]), lanes=2, clock=clock, every=0)
    assert "running: baseline (starting), t-x__a1 (starting)" in p.poll()


def test_the_thread_prints_the_line_while_the_jobs_run(tmp_path, capsys):
    clock = Clock()
    jobs = _logs(tmp_path, ["a"])
    jobs[0][1].write_text(STEP.format(i=1, n=2))
    p = JobsProgress("runs", jobs, lanes=1, clock=clock, every=0.0)
    with following(p, poll_s=0.005):
        deadline = time.monotonic() + 5
        while "[sweep] runs 0/1 done" not in capsys.readouterr().out:
            assert time.monotonic() < deadline, "no progress line"
            time.sleep(0.01)
    p.finished("a")
    assert p.poll() is None  # every job ended: nothing left to report


def test_run_followed_marks_each_job_finished_and_keeps_notices_to_none(tmp_path, monkeypatch):
    seen = []

    def fake_run_jobs(jobs, at_once=1):
        seen.append(os.environ.get(NOTICES_SHOWN_ENV))
        for job in jobs:
            job.done(0, "done: 2 steps")

    monkeypatch.setattr(sweep_local, "run_jobs", fake_run_jobs)
    monkeypatch.delenv(NOTICES_SHOWN_ENV, raising=False)
    ended = []
    job = Job(["true"], tmp_path / "a.log", lambda code, text: ended.append(text))
    sw.run_followed("runs", [("a", job)], 1)
    assert ended == ["done: 2 steps"] and seen == ["all"]
    assert NOTICES_SHOWN_ENV not in os.environ  # the sweep's own environment as it was


@pytest.mark.slow
def test_a_sweep_of_short_real_jobs_prints_their_progress(tmp_path, monkeypatch, capsys):
    """Two subprocess jobs, one lane: each writes a step line and lingers; the sweep's line reads
    it from the job's log while the job runs (periods shortened to fit a second)."""
    from megatron_kd.study import sweep_progress

    monkeypatch.setattr(sweep_progress, "PROGRESS_EVERY_S", 0.2)
    monkeypatch.setattr(sweep_progress, "POLL_S", 0.05)
    said = []
    jobs = [(name, Job(["sh", "-c", f"echo '12:00:00 step {i}/2 | ETA 0:00:01'; sleep 0.6"],
                          tmp_path / f"{name}.log", lambda code, text, name=name: said.append(name)))
            for i, name in ((1, "s__a"), (2, "s__b"))]
    sw.run_followed("runs", jobs, lanes=1, done_before=1, total=3)
    out = capsys.readouterr().out
    assert said == ["s__a", "s__b"]
    assert "[sweep] runs 1/3 done | running: a step 1/2 | ETA " in out, out
    assert "[sweep] runs 2/3 done | running: b step 2/2 | ETA " in out, out
