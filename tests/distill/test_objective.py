"""Mixing conventions and α / temperature schedules."""

import math

import pytest

from megatron_kd.config.schema import ScheduleConfig
from megatron_kd.distill.objective import mix_weights
from megatron_kd.distill.schedules import scheduled_value


def test_mix_weights():
    w = mix_weights("convex", 0.0)
    assert (w.ce, w.kd) == (1.0, 0.0)
    w = mix_weights("convex", 0.3)
    assert (w.ce, w.kd) == pytest.approx((0.7, 0.3))
    w = mix_weights("keep_ce", 0.3)
    assert (w.ce, w.kd) == (1.0, 0.3)
    w = mix_weights("keep_kd", 0.3)
    assert (w.ce, w.kd) == pytest.approx((0.7, 1.0))


def test_schedules():
    const = ScheduleConfig()
    assert scheduled_value(0.5, const, 0.7) == 0.5
    lin = ScheduleConfig(kind="linear", final=0.1)
    assert scheduled_value(0.5, lin, 0.0) == 0.5 and scheduled_value(0.5, lin, 1.0) == pytest.approx(0.1)
    assert scheduled_value(0.5, lin, 0.5) == pytest.approx(0.3)
    cos = ScheduleConfig(kind="cosine", final=0.0)
    assert scheduled_value(1.0, cos, 0.5) == pytest.approx(0.5)
    assert scheduled_value(1.0, cos, 1.0) == pytest.approx(0.0, abs=1e-12)
    wsd = ScheduleConfig(kind="wsd", final=0.0, warmup_fraction=0.1, decay_fraction=0.2)
    values = [scheduled_value(0.6, wsd, p / 100) for p in range(101)]
    assert values[0] == 0.0 and values[5] == pytest.approx(0.3)  # warming up
    assert all(v == 0.6 for v in values[10:81])  # stable
    assert values[90] == pytest.approx(0.3) and values[100] == pytest.approx(0.0, abs=1e-12)  # decay
    assert all(not math.isnan(v) for v in values)
