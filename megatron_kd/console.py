"""How values appear in the one-line messages people read (progress lines, errors)."""

from __future__ import annotations

import time
from collections.abc import Callable

# A long job (a sweep, a teacher-cache job, `mkd fit`) says where it is at least every 30 s,
# one line at a time; this often at most, so a line lands within 30 s whatever the step time.
PROGRESS_EVERY_S = 25.0

# Third-party notices said once per process tree (runtime/cpu_compat.py): the environment variable
# naming those already shown ("all": none is said), inherited by the processes a process starts.
NOTICES_SHOWN_ENV = "MKD_UPSTREAM_NOTICES_SHOWN"


def hms(seconds: float) -> str:
    """A duration as H:MM:SS (an ETA on a progress line)."""
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line and `limit` characters (third-party errors
    can be pages long; a message line holds one), or its type's name when it has none."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


class Every:
    """`due()` is True at most once per `seconds` (the first time `seconds` after the start): the
    throttle of a progress line. The clock is a parameter so a test can drive it."""

    def __init__(self, seconds: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock = seconds, clock
        self.started = self.last = clock()

    def due(self) -> bool:
        now = self.clock()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True

    def elapsed(self) -> float:
        return self.clock() - self.started
