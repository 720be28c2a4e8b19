"""α and temperature over training progress (constant, linear, cosine, WSD)."""

from __future__ import annotations

import math

from megatron_kd.config.schema import ScheduleConfig


def scheduled_value(base: float, sched: ScheduleConfig, progress: float) -> float:
    """The value at `progress` in [0, 1] (fraction of training steps done)."""
    p = min(max(progress, 0.0), 1.0)
    final = base if sched.final is None else sched.final
    if sched.kind == "constant":
        return base
    if sched.kind == "linear":
        return base + (final - base) * p
    if sched.kind == "cosine":
        return final + (base - final) * 0.5 * (1 + math.cos(math.pi * p))
    # wsd: warm up from `final` to base, hold, decay back to `final` (cosine) at the end.
    w, d = sched.warmup_fraction, sched.decay_fraction
    if w > 0 and p < w:
        return final + (base - final) * p / w
    if p <= 1 - d:
        return base
    q = (p - (1 - d)) / d
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * q))
