"""Follow the logs of commands that run in the background while another command runs: `make
demo` trains its teachers and runs its sweeps in two lanes whose output goes to log files, and
this puts their progress on the terminal.

    python -m megatron_kd.study.follow_logs [--every S] LOG... -- COMMAND [ARG...]

COMMAND runs with the terminal as its output; meanwhile each LOG that COMMAND (re)writes is read
as it grows. A job's finished line (`[sweep] NAME: done: ...`, `done: ...`) is relayed as it
appears, shortened; otherwise one line every S seconds (default PROGRESS_EVERY_S) says the newest
progress of each log that moved: a sweep's progress line, a run's `step i/n` and its ETA, a
teacher-cache job's micro-batch count. Exits with COMMAND's exit status."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from megatron_kd.console import PROGRESS_EVERY_S, hms

POLL_S = 2.0

_FINISHED = re.compile(r"^(\[sweep\] \S+: )?(done|already complete|stopped): |^\[sweep\] teacher cache \S+: ")
_SWEEP_PROGRESS = re.compile(r"^\[sweep\] (.* done \| .*)$")
_STEP = re.compile(r"\bstep (\d+/\d+)\b.*?\bETA (\d+:\d\d:\d\d)")
_CACHE = re.compile(r"\b(teacher cache: micro-batch \d+/\d+.*)$")


def finished_line(line: str) -> str | None:
    """A job's finished line, without its run directory (the terminal line stays short)."""
    if not _FINISHED.match(line):
        return None
    return re.sub(r", run dir \S+|; the teacher ran .*", "", line)


def status_of(line: str) -> str | None:
    """The progress a line reports, in a few words, or None."""
    m = _SWEEP_PROGRESS.match(line)
    if m:
        return m.group(1)
    m = _STEP.search(line)
    if m:
        return f"step {m.group(1)}, ETA {m.group(2)}"
    m = _CACHE.search(line)
    return m.group(1) if m else None


@dataclass
class FollowedLog:
    """One log, read from where the last read stopped; a log rewritten from its start (the
    command truncated it) is read again from there. Logs not written since `since` are skipped:
    an earlier run's files stay unread until the command writes them again."""

    path: Path
    since: float
    offset: int | None = None
    partial: str = ""
    status: str | None = field(default=None)  # the newest progress it reported
    status_at: float = 0.0  # when that was read
    running: bool = False  # written since its last finished line

    @property
    def label(self) -> str:
        return self.path.stem

    def new_lines(self) -> list[str]:
        try:
            stat = self.path.stat()
        except OSError:
            return []
        if self.offset is None:
            if stat.st_mtime < self.since:
                return []
            self.offset = 0
        if stat.st_size < self.offset:  # truncated: a new run of the command writes it afresh
            self.offset, self.partial = 0, ""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        text = self.partial + data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self.partial = lines.pop()  # a line still being written
        return lines


class Follower:
    """Reads the logs at each `poll()` and says what is due: finished lines at once, the status
    line every `every` seconds (none when no log moved and nothing was said for less than it)."""

    def __init__(self, logs: list[Path], every: float = PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        started = wall()
        self.logs = [FollowedLog(Path(p), started - 1.0) for p in logs]  # 1 s: coarse file times
        self.every, self.clock = every, clock
        self.started = self.last_line = clock()

    def poll(self) -> list[str]:
        out = []
        now = self.clock()
        for log in self.logs:
            for line in log.new_lines():
                line = line.strip()
                done = finished_line(line)
                if done:
                    out.append(f"  {log.label}: {done}")
                    log.status, log.running = None, False  # its job ended: nothing to report until the next
                else:
                    log.running = True
                    if status_of(line):
                        log.status, log.status_at = status_of(line), now
        if out:
            self.last_line = now
        elif now - self.last_line >= self.every:
            out.append(self.status_line(now))
            self.last_line = now
        return out

    def status_line(self, now: float) -> str:
        """`[0:03:30] lane-a: runs 1/3 done | ... ; teacher-x: step 200/500, ETA 0:01:10 (40 s ago)`."""
        known = [f"{log.label}: {log.status}" + (f" ({now - log.status_at:.0f} s ago)"
                                                 if now - log.status_at >= self.every else "")
                 if log.status else f"{log.label}: running, no step line yet"
                 for log in self.logs if log.status or log.running]
        return f"  [{hms(now - self.started)}] " + (" ; ".join(known) or "working")


def run_followed(command: list[str], logs: list[Path], every: float = PROGRESS_EVERY_S,
                 poll_s: float = POLL_S) -> int:
    """Run `command` (its output on this terminal) and say the logs' progress until it ends."""
    follower = Follower(logs, every)
    proc = subprocess.Popen(command)
    try:
        while True:
            try:
                return proc.wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                pass
            for line in follower.poll():
                print(line, flush=True)
    except KeyboardInterrupt:  # Ctrl-C reached the command too (one process group): let it stop
        return proc.wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: python -m megatron_kd.study.follow_logs [--every S] LOG... -- COMMAND [ARG...]",
              file=sys.stderr)
        return 2
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m megatron_kd.study.follow_logs")
    parser.add_argument("--every", type=float, default=PROGRESS_EVERY_S)
    parser.add_argument("logs", nargs="*", type=Path)
    args = parser.parse_args(argv[:cut])
    command = argv[cut + 1:]
    if not command or args.every <= 0:
        print("follow_logs: give a COMMAND after `--` and --every S > 0", file=sys.stderr)
        return 2
    return run_followed(command, args.logs, args.every)


if __name__ == "__main__":
    sys.exit(main())
