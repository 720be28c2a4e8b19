"""Paired statistics of a sweep: every run of a student shares its initialisation seed with that
student's baseline of the same seed and is scored on the same validation sequences, so a gain is
measured per seed, not as a difference of two independent means.

The model, per student and validation set: loss[point, seed] = mu[point] + b[seed] + e, e ~ N(0,
sigma^2) independent (a two-way additive model, least squares over every run of the student:
baselines, KD points, baselines at other lengths). The seed effect b is what pairing removes;
sigma is pooled over all points, with N - rank degrees of freedom. A point's gain is
mu[baseline] - mu[point], its standard error from the fit's covariance, its interval from the t
distribution at those degrees of freedom.

With no residual degrees of freedom (the demo: each KD point has one seed, the baseline two) the
seed effect cannot be separated from the noise: the gain's error then comes from the baselines'
own seed spread, as if unpaired (var = s_b^2 (1/n_point + 1/n_baseline), n_b - 1 degrees of
freedom), and the report says so. With fewer than two baseline seeds there is no noise estimate
and no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtr, stdtrit  # the t distribution's cdf and quantile (fast ufuncs)


@dataclass
class Estimate:
    """A linear contrast of the point means: its value, standard error and degrees of freedom."""

    value: float
    se: float | None
    df: int

    def interval(self, level: float) -> tuple[float, float] | None:
        if self.se is None or self.df < 1:
            return None
        h = float(stdtrit(self.df, 0.5 + level / 2)) * self.se
        return self.value - h, self.value + h

    def p_two_sided(self) -> float | None:
        if self.se is None or self.df < 1:
            return None
        if self.se == 0:
            return 0.0 if self.value != 0 else 1.0
        return float(2 * stdtr(self.df, -abs(self.value) / self.se))

    def p_greater(self, margin: float = 0.0) -> float | None:
        """One-sided p of value > margin."""
        if self.se is None or self.df < 1:
            return None
        if self.se == 0:
            return 0.0 if self.value > margin else 1.0
        return float(stdtr(self.df, -(self.value - margin) / self.se))

    def p_less(self, margin: float = 0.0) -> float | None:
        p = Estimate(-self.value, self.se, self.df).p_greater(-margin)
        return p


class PairedFit:
    """The additive point x seed model of one student on one set (or one per-run quantity).

    `cells`: {point key: {seed key: loss}}; `baseline`: the baseline's point key."""

    def __init__(self, cells: dict, baseline):
        self.baseline = baseline
        self.points = sorted(cells, key=repr)
        seeds = sorted({s for c in cells.values() for s in c}, key=repr)
        self.seeds = seeds
        rows, ys = [], []
        for i, p in enumerate(self.points):
            for s, y in cells[p].items():
                if y is None or not math.isfinite(y):
                    continue
                x = np.zeros(len(self.points) + len(seeds) - 1)
                x[i] = 1.0
                j = seeds.index(s)
                if j > 0:  # the first seed is the reference level
                    x[len(self.points) + j - 1] = 1.0
                rows.append(x)
                ys.append(y)
        self.n = len(ys)
        self.cells = cells
        X, y = np.asarray(rows), np.asarray(ys)
        self._index = {p: i for i, p in enumerate(self.points)}
        if not ys:
            self.beta, self.df, self.sigma, self._cov = None, 0, None, None
            self.source = "no runs"
            return
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        rank = int(np.linalg.matrix_rank(X))
        self.df = self.n - rank
        rss = float(np.sum((y - X @ beta) ** 2))
        self.beta = beta
        self.sigma = math.sqrt(rss / self.df) if self.df > 0 else None
        self._cov = np.linalg.pinv(X.T @ X) * (self.sigma ** 2) if self.sigma is not None else None
        self.source = (f"paired: point x seed model over {self.n} runs of {len(self.points)} points, "
                       f"{self.df} degrees of freedom")
        self._fallback = None
        if self.df == 0:
            self._fallback = self._baseline_spread()
            if self._fallback is not None:
                sd, df = self._fallback
                self.source = (f"unpaired: no residual degrees of freedom, so the baselines' seed spread "
                               f"(sd {sd:.4f}, {df} degrees of freedom) stands for each run's noise")
            else:
                self.source = "no noise estimate (one baseline seed, one seed per point)"

    def _baseline_spread(self) -> tuple[float, int] | None:
        base = [v for v in self.cells.get(self.baseline, {}).values() if v is not None and math.isfinite(v)]
        if len(base) < 2:
            return None
        return float(np.std(base, ddof=1)), len(base) - 1

    def n_seeds(self, point) -> int:
        return sum(1 for v in self.cells.get(point, {}).values() if v is not None and math.isfinite(v))

    def mean(self, point) -> float:
        vals = [v for v in self.cells.get(point, {}).values() if v is not None and math.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan

    def contrast(self, weights: dict) -> Estimate:
        """sum_p w_p mu_p (weights must sum to zero: a difference of points, so the seed
        effects cancel)."""
        if self.beta is None or any(p not in self._index or self.n_seeds(p) == 0 for p in weights):
            return Estimate(math.nan, None, 0)
        if self._fallback is not None or self.df == 0:
            # Unpaired: the difference of the points' raw means, each mean's variance sd^2/n.
            value = sum(w * self.mean(p) for p, w in weights.items())
            if self._fallback is None:
                return Estimate(value, None, 0)
            sd, df = self._fallback
            se = sd * math.sqrt(sum(w * w / self.n_seeds(p) for p, w in weights.items()))
            return Estimate(value, se, df)
        c = np.zeros(len(self.beta))
        for p, w in weights.items():
            c[self._index[p]] += w
        value = float(c @ self.beta)
        se = math.sqrt(max(0.0, float(c @ self._cov @ c)))
        return Estimate(value, se, self.df)

    def gain(self, point) -> Estimate:
        """The baseline's loss minus the point's (positive: distillation helped)."""
        if point == self.baseline:
            return Estimate(0.0, 0.0, max(self.df, 1))
        return self.contrast({self.baseline: 1.0, point: -1.0})

    def seed_matrix(self, points: list) -> np.ndarray:
        """[point, seed] losses (NaN where a point lacks a seed), for resampling seeds."""
        return np.array([[self.cells.get(p, {}).get(s, math.nan) for s in self.seeds] for p in points],
                        dtype=float)


def holm(pvalues: dict) -> dict:
    """Holm's step-down adjustment of {name: p} (None: not tested, left None)."""
    tested = sorted(((p, k) for k, p in pvalues.items() if p is not None), key=lambda t: t[0])
    m, out, running = len(tested), {k: None for k in pvalues}, 0.0
    for i, (p, k) in enumerate(tested):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out
