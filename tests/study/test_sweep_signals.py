"""SIGTERM or Ctrl-C to a local sweep ends its jobs and their children (each job its own process
group): nothing outlives the sweep. A real runner process with real child and grandchild
processes, signalled as a user or a scheduler would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.distributed import REPO
from tests.helpers import ENV

# A job that starts a grandchild (a "rank") in its own group, records both pids, then sleeps;
# it ignores nothing, so a SIGTERM to its group ends both.
JOB = textwrap.dedent("""
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.getpid()} {child.pid}\\n")
    time.sleep(120)
""")

# The runner restores Python's Ctrl-C handler: a shell's background job (CI, nohup) inherits
# SIGINT ignored, and a terminal's sweep does not.
RUNNER = textwrap.dedent("""
    import signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from pathlib import Path
    from megatron_kd.study.jobs import Job, run_jobs
    pids, logs = sys.argv[1], Path(sys.argv[2])
    jobs = [Job([sys.executable, "-c", sys.argv[3], pids], logs / f"job{i}.log", lambda rc, text: None)
            for i in range(3)]
    run_jobs(jobs, at_once=2)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its parent counts as gone
        return f.read().split(") ")[-1][0] != "Z"


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, None)])
def test_signal_to_a_sweep_ends_its_jobs(sig, code, tmp_path):
    pids = tmp_path / "pids"
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(pids), str(tmp_path), JOB], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not pids.exists() or len(pids.read_text().split()) < 4):
        time.sleep(0.1)  # both running jobs and their children are up
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 4
    t0 = time.monotonic()
    runner.send_signal(sig)
    out, err = runner.communicate(timeout=30)
    assert time.monotonic() - t0 < 15, "the sweep did not stop its jobs in time"
    assert code is None or runner.returncode == code, (runner.returncode, err[-2000:])
    time.sleep(0.2)
    assert not [p for p in started if _alive(p)], "a job or its child outlived the sweep"
    assert len(pids.read_text().split()) == 4, "the third job was started after the signal"
