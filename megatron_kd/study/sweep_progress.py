"""The progress line of a local sweep: its jobs run as subprocesses that write their own logs
(study/jobs.py), so the sweep reads each running job's log every few seconds and says, every
PROGRESS_EVERY_S at most, how many jobs are done, where the running ones are and how long the
rest should take. A finished job has its own line (the sweep's callbacks print it); the quiet
timer restarts then, so a sweep whose jobs finish often prints no progress line between them.

`JobsProgress` is driven by an explicit clock and explicit log paths (a test gives it a fake
clock and fake logs); `following` runs it on a thread beside study/jobs.run_jobs."""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from megatron_kd.console import PROGRESS_EVERY_S, hms

POLL_S = 2.0  # how often the thread looks at the clock (the logs are read only when a line is due)
TAIL_BYTES = 16384  # a log's last bytes hold its last progress line (a step line is ~200 bytes)

# `mkd train`'s step line ("step 40/80 | ...") and `mkd teacher-cache`'s ("micro-batch 40/384 ...")
_POSITION = re.compile(r"\b(step|micro-batch) (\d+)/(\d+)\b")


@dataclass(frozen=True)
class Position:
    unit: str  # "step" or "micro-batch"
    done: int
    total: int

    def __str__(self) -> str:
        return f"{self.unit} {self.done}/{self.total}"


def last_position(log: Path) -> Position | None:
    """The last step (or teacher-cache micro-batch) a job's log reports, None before its first."""
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:  # not started yet, or removed under us: nothing to report
        return None
    found = None
    for found in _POSITION.finditer(text):
        pass
    if found is None:
        return None
    done, total = int(found.group(2)), int(found.group(3))
    return Position(found.group(1), done, total) if 0 < total else None


def shared_prefix(names: list[str]) -> str:
    """The start every point name shares, up to its last `__` (the student: `cpu-small__`), which
    the progress line leaves off to stay short; none when there is one name."""
    if len(names) < 2:
        return ""
    common = names[0]
    for name in names[1:]:
        while not name.startswith(common):
            common = common[:-1]
    return common[:common.rfind("__") + 2] if "__" in common else ""


def progress_line(what: str, done: int, total: int, running: list[tuple[str, Position | None]],
                  eta_s: float | None) -> str:
    """`[sweep] runs 3/12 done | running: NAME step 40/80, NAME (starting) | ETA 0:04:10`."""
    parts = [f"[sweep] {what} {done}/{total} done"]
    if running:
        parts.append("running: " + ", ".join(f"{name} {pos if pos else '(starting)'}" for name, pos in running))
    parts.append(f"ETA {hms(eta_s)}" if eta_s is not None else "ETA once a job reports a step")
    return " | ".join(parts)


class JobsProgress:
    """The jobs of one study/jobs.run_jobs call, `lanes` at a time, in the order it starts them:
    it starts the next job whenever one ends, so the jobs started are the first (finished + lanes)
    of the list, and each one's start is the end of the job whose lane it took."""

    def __init__(self, what: str, jobs: list[tuple[str, Path]], lanes: int, done_before: int = 0,
                 total: int | None = None, clock: Callable[[], float] = time.monotonic,
                 every: float | None = None):
        self.what, self.jobs, self.lanes = what, list(jobs), max(1, lanes)
        self.done_before = done_before
        self.total = total if total is not None else done_before + len(self.jobs)
        self.clock, self.every = clock, PROGRESS_EVERY_S if every is None else every
        self.started_at = clock()
        self.last_line_at = self.started_at
        self.ended: dict[str, float] = {}  # name -> the clock when its job ended
        self.lock = threading.Lock()

    def finished(self, name: str) -> None:
        """A job ended (its own line is printed by the caller): the quiet timer restarts."""
        with self.lock:
            self.ended[name] = self.last_line_at = self.clock()

    def _starts(self) -> dict[str, float]:
        """When each started job started: the first `lanes` at once, then one per job ended."""
        ends = sorted(self.ended.values())
        starts = {}
        for i, (name, _) in enumerate(self.jobs):
            k = i - self.lanes  # the job started when the (k+1)-th job ended
            if k < 0:
                starts[name] = self.started_at
            elif k < len(ends):
                starts[name] = ends[k]
        return starts

    def line(self) -> str:
        with self.lock:  # the callbacks add to `ended` on the main thread
            return self._line()

    def _line(self) -> str:
        now = self.clock()
        starts = self._starts()
        running = [(name, last_position(log)) for name, log in self.jobs if name in starts and name not in self.ended]
        cut = len(shared_prefix([name for name, _ in self.jobs]))
        return progress_line(self.what, self.done_before + len(self.ended), self.total,
                             [(name[cut:], pos) for name, pos in running], self._eta(now, starts, running))

    def _eta(self, now: float, starts: dict, running: list) -> float | None:
        """Remaining time: each running job's from its own rate (or the mean duration), the queued
        jobs at the mean duration, shared among the lanes."""
        durations = [end - starts[name] for name, end in self.ended.items() if name in starts]
        estimates = {}
        for name, pos in running:
            elapsed = now - starts[name]
            if pos is not None and pos.done > 0 and elapsed > 0:
                estimates[name] = elapsed * pos.total / pos.done
        typical = (sum(durations) / len(durations) if durations
                   else sum(estimates.values()) / len(estimates) if estimates else None)
        if typical is None and running:
            return None
        left_running = [max(0.0, estimates.get(name, typical) - (now - starts[name])) for name, _ in running]
        queued = len(self.jobs) - len(self.ended) - len(running)
        work = sum(left_running) + queued * (typical or 0.0)
        return max(max(left_running, default=0.0), work / self.lanes)

    def poll(self) -> str | None:
        """The progress line when one is due (PROGRESS_EVERY_S since the last line), else None."""
        with self.lock:
            if self.clock() - self.last_line_at < self.every or len(self.ended) == len(self.jobs):
                return None
            self.last_line_at = self.clock()
            return self._line()


def say(line: str) -> None:
    """One line in one write: the progress thread and the job callbacks print side by side."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def following(progress: JobsProgress, poll_s: float | None = None) -> Iterator[JobsProgress]:
    """Print `progress`'s line whenever it is due, on a thread, while the block runs."""
    stop = threading.Event()
    poll_s = POLL_S if poll_s is None else poll_s

    def loop() -> None:
        while not stop.wait(poll_s):
            line = progress.poll()
            if line:
                say(line)

    thread = threading.Thread(target=loop, name="sweep-progress", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()
