"""The paired fit without a dense design matrix (paired.AdditiveFit) against the dense float64
least squares it replaced: the same contrasts, errors and degrees of freedom on random designs
with missing cells; points linked by no shared seed give no paired contrast."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megatron_kd.study.paired import AdditiveFit, PairedFit


def dense_reference(cells: dict, weights: dict) -> tuple[float, float, int]:
    """(value, se, df) of a contrast from the dense point x seed design (first seed the reference),
    by np.linalg.lstsq and pinv, as paired.py computed it before."""
    points = sorted(cells, key=repr)
    seeds = sorted({s for c in cells.values() for s in c}, key=repr)
    rows, ys = [], []
    for i, p in enumerate(points):
        for s, y in cells[p].items():
            x = np.zeros(len(points) + len(seeds) - 1)
            x[i] = 1.0
            if seeds.index(s) > 0:
                x[len(points) + seeds.index(s) - 1] = 1.0
            rows.append(x)
            ys.append(y)
    X, y = np.asarray(rows), np.asarray(ys)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    df = len(y) - int(np.linalg.matrix_rank(X))
    sigma2 = float(np.sum((y - X @ beta) ** 2)) / df
    c = np.zeros(X.shape[1])
    for p, w in weights.items():
        c[points.index(p)] += w
    return float(c @ beta), math.sqrt(float(c @ np.linalg.pinv(X.T @ X) @ c) * sigma2), df


def random_cells(rng, n_points: int, n_seeds: int, missing: float) -> dict:
    """A connected design: the baseline has every seed, the other points a random subset."""
    seed_effect = rng.normal(0, 0.05, n_seeds)
    cells = {"base": {s: 4.0 + seed_effect[s] + rng.normal(0, 0.01) for s in range(n_seeds)}}
    for i in range(n_points):
        have = [s for s in range(n_seeds) if rng.random() > missing] or [int(rng.integers(n_seeds))]
        cells[f"p{i}"] = {s: 3.9 + 0.01 * i + seed_effect[s] + rng.normal(0, 0.01) for s in have}
    return cells


@pytest.mark.parametrize("n_points,n_seeds,missing", [(6, 4, 0.3), (12, 3, 0.5), (3, 9, 0.4), (20, 2, 0.0)])
def test_fit_equals_the_dense_least_squares(n_points, n_seeds, missing):
    rng = np.random.default_rng(n_points * 100 + n_seeds)
    cells = random_cells(rng, n_points, n_seeds, missing)
    fit = PairedFit(cells, "base")
    for i in range(n_points):
        for weights in ({"base": 1.0, f"p{i}": -1.0}, {f"p{i}": 0.5, f"p{(i + 1) % n_points}": 0.5, "base": -1.0}):
            value, se, df = dense_reference(cells, weights)
            e = fit.contrast(weights)
            assert e.df == df == fit.df
            assert e.value == pytest.approx(value, rel=1e-9, abs=1e-12)
            assert e.se == pytest.approx(se, rel=1e-7, abs=1e-12)


def test_more_seeds_than_points_factors_the_point_block():
    """(The Schur complement of the smaller block is the one factored: here the points'.)"""
    rng = np.random.default_rng(5)
    cells = random_cells(rng, 2, 40, 0.2)
    fit = PairedFit(cells, "base")
    value, se, df = dense_reference(cells, {"base": 1.0, "p1": -1.0})
    e = fit.gain("p1")
    assert (e.value, e.df) == (pytest.approx(value, rel=1e-9), df) and e.se == pytest.approx(se, rel=1e-7)


def test_points_sharing_no_seed_have_no_paired_contrast():
    """Two groups of points on disjoint seeds: within a group the dense answer, across none (a
    minimum-norm least-squares number there would be an artefact of the parameterisation)."""
    cells = {"base": {1: 4.00, 2: 4.03}, "kd": {1: 3.95, 2: 3.99}, "other": {3: 3.90, 4: 3.97},
             "other2": {3: 3.80, 4: 3.88}}
    fit = PairedFit(cells, "base")
    value, se, df = dense_reference(cells, {"base": 1.0, "kd": -1.0})
    e = fit.gain("kd")
    assert fit.df == df == 2 and e.value == pytest.approx(value) and e.se == pytest.approx(se)
    across = fit.gain("other")
    assert math.isnan(across.value) and across.se is None and across.interval(0.95) is None


@pytest.mark.parametrize("dense_max,rows_max", [(0, 5_000_000), (2000, 0), (0, 0)])
def test_sparse_factor_and_sparse_rows_give_the_same_fit(monkeypatch, dense_max, rows_max):
    """(Large designs factor the Schur complement by sparse LU and keep the seed counts sparse:
    forced here on a small one.)"""
    monkeypatch.setattr(AdditiveFit, "DENSE_MAX", dense_max)
    monkeypatch.setattr(AdditiveFit, "DENSE_ROWS_MAX", rows_max)
    rng = np.random.default_rng(11)
    for n_points, n_seeds in ((10, 4), (3, 12)):
        cells = random_cells(rng, n_points, n_seeds, 0.3)
        weights = {"base": 1.0, "p1": -1.0}
        value, se, df = dense_reference(cells, weights)
        e = PairedFit(cells, "base").contrast(weights)
        assert (e.value, e.se, e.df) == (pytest.approx(value, rel=1e-9), pytest.approx(se, rel=1e-7), df)
