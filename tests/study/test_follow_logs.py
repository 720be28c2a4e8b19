"""`make demo`'s terminal (study/follow_logs.py): the lanes' logs, read as they grow, give a
finished line at once and one progress line per period. Fake logs and a fake clock: fast."""

import os

from megatron_kd.study.follow_logs import Follower, finished_line, main, status_of


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_what_a_line_reports():
    assert status_of("[sweep] runs 2/5 done | running: x step 40/80 | ETA 0:01:00") == (
        "runs 2/5 done | running: x step 40/80 | ETA 0:01:00")
    assert status_of("12:00:00 step 100/250 | tokens 9 | loss (train CE) 5.1 | lr 1 | 9 tok/s | ETA 0:01:10") == (
        "step 100/250, ETA 0:01:10")
    assert status_of("12:00:00 teacher cache: micro-batch 3/9 (shard 1/1) | ETA 0:00:20") == (
        "teacher cache: micro-batch 3/9 (shard 1/1) | ETA 0:00:20")
    assert status_of("[sweep] x: training") is None
    assert finished_line("[sweep] x: done: 80 steps, final train CE 5.1, indomain 5.2, run dir runs/x") == (
        "[sweep] x: done: 80 steps, final train CE 5.1, indomain 5.2")
    assert finished_line("[sweep] x: finished, skipped") is None
    assert finished_line("[sweep] teacher cache c/t: 8 samples, top-k 64; the teacher ran over it; train from it") == (
        "[sweep] teacher cache c/t: 8 samples, top-k 64")


def test_finished_lines_at_once_progress_once_a_period(tmp_path):
    clock = Clock()
    lane, teacher, old = tmp_path / "lane-a.log", tmp_path / "teacher.log", tmp_path / "old.log"
    old.write_text("[sweep] x: done: 1 steps\n")
    os.utime(old, (1, 1))  # an earlier run's log: not read until written again
    f = Follower([lane, teacher, old], every=30, clock=clock)
    assert f.poll() == []
    clock.t = 30
    assert f.poll() == ["  [0:00:30] working"]  # nothing written yet
    teacher.write_text("12:00:00 distilling from x\n")
    clock.t = 60
    assert f.poll() == ["  [0:01:00] teacher: running, no step line yet"]
    clock.t = f.started = f.last_line = 0  # the steps below count from here
    with open(teacher, "a") as out:
        out.write("12:00:00 step 100/250 | loss (train CE) 5 | ETA 0:01:10\n12:00:01 step 2")  # half a line
    lane.write_text("[sweep] runs 0/2 done | running: a step 20/80 | ETA 0:02:00\n")
    clock.t = 10
    assert f.poll() == []
    clock.t = 30
    assert f.poll() == ["  [0:00:30] lane-a: runs 0/2 done | running: a step 20/80 | ETA 0:02:00 ; "
                        "teacher: step 100/250, ETA 0:01:10"]
    with open(lane, "a") as out:
        out.write("[sweep] a: done: 80 steps, final train CE 5.1, run dir runs/a\n")
    clock.t = 35
    assert f.poll() == ["  lane-a: [sweep] a: done: 80 steps, final train CE 5.1"]
    clock.t = 70  # nothing new from the teacher: its last step (read at 10 s), with its age
    assert f.poll() == ["  [0:01:10] teacher: step 100/250, ETA 0:01:10 (60 s ago)"]
    lane.write_text("[sweep] runs 0/1 done | running: b step 1/9 | ETA 0:00:50\n")  # rewritten: read afresh
    clock.t = 100
    assert f.poll()[0].startswith("  [0:01:40] lane-a: runs 0/1 done | running: b step 1/9")


def test_the_command_runs_and_its_exit_status_is_kept(tmp_path):
    assert main(["--every", "5", str(tmp_path / "x.log"), "--", "sh", "-c", "exit 3"]) == 3
    assert main(["no-command"]) == 2
