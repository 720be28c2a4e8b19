"""Subprocess jobs of a local sweep (teacher-cache jobs, then the points' training runs): at most
N at a time, each writing its own log; the first failure stops the others (a failed sweep leaves
no stray jobs) and is raised."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
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


GRACE_S = 10.0  # a stopped job's time to act on SIGTERM (a training run checkpoints) before SIGKILL


class Terminated(BaseException):
    """SIGTERM reached the sweep: its jobs are stopped, then it exits 143."""


def _raise_terminated(signum, frame):
    raise Terminated()


def run_jobs(jobs: list[Job], at_once: int = 1) -> None:
    """Run `jobs` in order, `at_once` at a time. Each job is its own process group, so stopping
    one stops the ranks it launched too. SIGTERM or Ctrl-C to the sweep stops every running job
    (SIGTERM to its group, SIGKILL after GRACE_S) before the sweep ends: no job outlives it."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    running: list[tuple[subprocess.Popen, Job]] = []
    main_thread = threading.current_thread() is threading.main_thread()  # signals reach only it
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
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
    except BaseException as exc:  # a failed job, Ctrl-C, SIGTERM: nothing keeps running behind it
        if main_thread:  # a second SIGTERM must not cut the clean-up short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(running, graceful=isinstance(exc, (Terminated, KeyboardInterrupt)))
        if isinstance(exc, Terminated):
            raise SystemExit(143) from None
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _stop(running: list, graceful: bool) -> None:
    """End every running job's process group: SIGTERM first when asked to stop (a training run
    saves a checkpoint), SIGKILL for whatever is left after GRACE_S (at once on a job failure)."""
    alive = [proc for proc, _ in running if proc.poll() is None]
    if graceful:
        for proc in alive:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(p.poll() is None for p in alive):
            time.sleep(0.1)
    for proc in alive:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
        proc.wait()
    for proc in alive:  # the job's own children (ranks) too, even once its leader has exited
        _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the whole group is gone already
        pass


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


def argument_path(path) -> str:
    """`path` as a command-line argument that no parser takes for an option (`-x` -> `./-x`)."""
    text = str(path)
    return f"./{text}" if text.startswith("-") else text
