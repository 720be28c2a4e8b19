"""Hand-written statistics of the study against the libraries that provide them (issue 42, item
7): Spearman's ρ (stats.spearman) against scipy's spearmanr; claim 4's exact permutation p
(claims._permutation_rhos) against scipy's permutation_test; Holm's adjustment (paired.holm)
against statsmodels' multipletests; the paired fit's weighted and unweighted contrasts
(paired.AdditiveFit) against statsmodels' WLS / OLS. Ours stay because they are faster (the
permutation ρ of every order at once, a sparse fit of 10^5 runs) or need no extra dependency."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from megatron_kd.study.claims import _corr_rows, _permutation_rhos, _ranks
from megatron_kd.study.paired import AdditiveFit, holm
from megatron_kd.study.stats import spearman


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, 9).astype(float).tolist()  # ties on both sides
    y = rng.normal(size=9).round(1).tolist()
    assert spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)


@pytest.mark.parametrize("alphas", [[0.2, 0.5, 0.8, 0.8, 0.5], [0.0, 0.2, 0.5, 0.8, 1.0, 0.2], [0.5, 0.8, 0.2]])
def test_claim4_exact_permutation_p_matches_scipys_permutation_test(alphas):
    strength = -np.array([4.62, 3.95, 4.10, 3.80, 4.50, 4.0][:len(alphas)])
    rx, ry = _ranks(strength), _ranks(np.asarray(alphas, dtype=float))
    rho = float(_corr_rows(rx, ry[None, :])[0])
    null = _permutation_rhos(rx, ry, np.random.default_rng(0))
    ours = float(np.mean(null >= rho - 1e-12))

    def statistic(a):
        return sps.spearmanr(strength, a).statistic

    ref = sps.permutation_test((np.asarray(alphas, dtype=float),), statistic, permutation_type="pairings",
                               alternative="greater", n_resamples=math.inf)
    assert rho == pytest.approx(sps.spearmanr(strength, alphas).statistic, abs=1e-12)
    assert ours == pytest.approx(ref.pvalue, abs=1e-12)


@pytest.mark.slow  # importing statsmodels takes ~6 s
def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(3)
    for _ in range(20):
        ps = rng.uniform(0, 0.2, rng.integers(1, 7)).tolist()
        ours = holm({i: p for i, p in enumerate(ps)})
        ref = multitest.multipletests(ps, method="holm")[1]
        assert [ours[i] for i in range(len(ps))] == pytest.approx(list(ref), abs=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_the_paired_fit_matches_statsmodels_least_squares(weighted):
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(5)
    n_p, n_s = 7, 4
    point, seed = np.meshgrid(np.arange(n_p), np.arange(n_s), indexing="ij")
    point, seed = point.ravel(), seed.ravel()
    keep = rng.random(len(point)) > 0.15  # some cells missing
    keep[: n_s] = True  # the baseline has every seed
    point, seed = point[keep], seed[keep]
    y = rng.normal(size=len(point)) + 0.1 * point
    var = np.where(point >= 4, 3.0, 1.0) * 0.02 ** 2  # points 4-6: a noisier family
    fit = AdditiveFit(point, seed, y, n_p, n_s, weight=1 / var if weighted else None)
    X = np.zeros((len(y), n_p + n_s - 1))
    X[np.arange(len(y)), point] = 1.0
    X[np.flatnonzero(seed > 0), n_p + seed[seed > 0] - 1] = 1.0
    ref = sm.WLS(y, X, weights=1 / var).fit() if weighted else sm.OLS(y, X).fit()
    for j in range(1, n_p):
        c = np.zeros(X.shape[1])
        c[0], c[j] = 1.0, -1.0
        value, v = fit.value_and_variance(np.array([0, j]), np.array([1.0, -1.0]))
        t = ref.t_test(c)
        assert value == pytest.approx(float(np.squeeze(t.effect)), abs=1e-10)
        # statsmodels scales the covariance by the residual variance; ours is in sigma^2 units
        # (unweighted) or the variance itself (weights = 1/variance, the scale known)
        se = math.sqrt(v * (ref.scale if not weighted else 1.0))
        ref_se = float(np.squeeze(t.sd)) / (math.sqrt(ref.scale) if weighted else 1.0)
        assert se == pytest.approx(ref_se, rel=1e-8)
    if not weighted:
        assert fit.df == int(ref.df_resid) and fit.rss == pytest.approx(ref.ssr, rel=1e-10)
