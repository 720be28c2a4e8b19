"""The paired point x seed model (study/paired.py) against hand-computed answers, and paired vs
unpaired intervals on a sweep whose seeds share an offset."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from megatron_kd.study.paired import Estimate, PairedFit, holm


def test_complete_design_matches_the_two_way_anova():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(4, 3))  # 4 points x 3 seeds
    cells = {f"p{i}": {s: float(y[i, s]) for s in range(3)} for i in range(4)}
    fit = PairedFit(cells, "p0")
    resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    sigma2 = float((resid ** 2).sum() / ((4 - 1) * (3 - 1)))
    assert fit.df == 6 and fit.sigma == pytest.approx(math.sqrt(sigma2))
    g = fit.gain("p2")
    assert g.value == pytest.approx(y[0].mean() - y[2].mean())
    assert g.se == pytest.approx(math.sqrt(2 * sigma2 / 3))  # a paired difference of two 3-seed means
    lo, hi = g.interval(0.95)
    assert hi - g.value == pytest.approx(sps.t.ppf(0.975, 6) * g.se)


def test_paired_interval_is_narrower_and_covers_the_planted_gain():
    """A per-seed offset shared by every run of that seed (sd 0.05) over noise of sd 0.005: the
    unpaired error counts the offset as noise, the paired one removes it."""
    rng = np.random.default_rng(1)
    covered, ratios = 0, []
    for _ in range(200):
        offset = rng.normal(0, 0.05, 3)
        cells = {"base": {s: 4.0 + offset[s] + rng.normal(0, 0.005) for s in range(3)},
                 "kd": {s: 3.98 + offset[s] + rng.normal(0, 0.005) for s in range(3)},
                 "other": {s: 4.1 + offset[s] + rng.normal(0, 0.005) for s in range(3)}}
        g = PairedFit(cells, "base").gain("kd")
        lo, hi = g.interval(0.95)
        covered += lo <= 0.02 <= hi
        base, kd = np.array(list(cells["base"].values())), np.array(list(cells["kd"].values()))
        unpaired = math.hypot(base.std(ddof=1) / math.sqrt(3), kd.std(ddof=1) / math.sqrt(3))
        ratios.append(g.se / unpaired)
    assert covered >= 180  # ~95 %
    assert np.median(ratios) < 0.3


def test_one_seed_points_use_the_baselines_spread_and_say_so():
    """No residual degrees of freedom: the gain is still the same-seed difference (the exact
    fit's), its error the baselines' seed spread standing for sigma (two runs: var 2 sd^2)."""
    cells = {"base": {1: 4.00, 2: 4.02}, "kd": {1: 3.95}}
    fit = PairedFit(cells, "base")
    assert fit.df == 0 and fit.source.startswith("paired by seed") and "baselines' seed spread" in fit.source
    g = fit.gain("kd")
    sd = np.std([4.00, 4.02], ddof=1)
    assert g.value == pytest.approx(4.00 - 3.95) and g.df == 1
    assert g.se == pytest.approx(sd * math.sqrt(2))
    # a point at a seed no baseline has: nothing pairs it, the difference of means (var sd^2 (1/2 + 1))
    apart = PairedFit({"base": {1: 4.00, 2: 4.02}, "kd": {3: 3.95}}, "base").gain("kd")
    assert apart.value == pytest.approx(4.01 - 3.95) and apart.se == pytest.approx(sd * math.sqrt(1 / 2 + 1))
    lone = PairedFit({"base": {1: 4.0}, "kd": {1: 3.9}}, "base").gain("kd")
    assert lone.se is None and lone.interval(0.95) is None and "no noise estimate" in \
        PairedFit({"base": {1: 4.0}, "kd": {1: 3.9}}, "base").source


def test_holm_and_one_sided_p():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert adj == {"a": pytest.approx(0.03), "b": pytest.approx(0.06), "c": pytest.approx(0.06), "d": None}
    e = Estimate(0.02, 0.01, 10)
    assert e.p_greater() == pytest.approx(sps.t.sf(2.0, 10))
    assert e.p_less(0.03) == pytest.approx(sps.t.cdf(-1.0, 10))
