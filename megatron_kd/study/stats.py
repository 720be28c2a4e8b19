"""Small statistics helpers of the study: whether a point is kd.auto's, and rank correlation (a run's
coordinates are RunRow.point_key).
The paired model and its intervals are in paired.py, the claims in claims.py."""

from __future__ import annotations

import math
import statistics

AUTO_FAMILY = "auto α"  # the comparison family of kd.auto points (their own residual variance)


def is_auto(r: dict) -> bool:
    """A kd.auto point (α set by the run; `auto_ceiling` its kd.alpha): no fixed α. A run's row
    says it itself (RunRow.is_auto)."""
    return r.get("auto_ceiling") is not None


def spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else None


def _ranks(v: list[float]) -> list[float]:
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks
