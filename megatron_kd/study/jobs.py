"""Subprocess jobs of a local sweep (teacher-cache jobs, then the points' training runs): at most
N at a time, each writing its own log; the first failure stops the others (a failed sweep leaves
no stray jobs) and is raised."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass
class Job:
    cmd: list[str]
    log: Path  # stdout and stderr
    done: Callable[[int, str], None]  # (exit code, the log's text): prints, or raises on failure
    start: str | None = None  # printed when it starts


def run_jobs(jobs: list[Job], at_once: int = 1) -> None:
    """Run `jobs` in order, `at_once` at a time. Each job is its own process group, so stopping
    one stops the ranks it launched too."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    running: list[tuple[subprocess.Popen, Job]] = []
    try:
        for job in jobs:
            while len(running) >= max(1, at_once):
                _finish_one(running)
            if job.start:
                print(job.start, flush=True)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            with open(job.log, "w") as log:
                running.append((subprocess.Popen(job.cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                 start_new_session=True), job))
        while running:
            _finish_one(running)
    except BaseException:  # a failed job, Ctrl-C, ...: nothing keeps running behind the error
        for proc, _ in running:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise


def _finish_one(running: list) -> None:
    """Wait for any running job to end, take it off the list and hand its result to `done`."""
    while True:
        for item in running:
            proc, job = item
            if proc.poll() is not None:
                running.remove(item)
                job.done(proc.returncode, job.log.read_text())
                return
        time.sleep(0.5)
