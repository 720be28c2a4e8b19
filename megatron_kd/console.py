"""How values appear in the one-line messages people read (progress lines, errors)."""

from __future__ import annotations


def hms(seconds: float) -> str:
    """A duration as H:MM:SS (an ETA on a progress line)."""
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line and `limit` characters (third-party errors
    can be pages long; a message line holds one), or its type's name when it has none."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
