"""Paired statistics of a sweep: every run of a student shares its initialisation seed with that
student's baseline of the same seed and is scored on the same validation sequences, so a gain is
measured per seed, not as a difference of two independent means.

The model, per student and validation set: loss[point, seed] = mu[point] + b[seed] + e, e ~ N(0,
sigma^2) independent (a two-way additive model, least squares over every run of the student:
baselines, KD points, baselines at other lengths). The seed effect b is what pairing removes;
sigma is pooled over all points, with N - rank degrees of freedom. A point's gain is
mu[baseline] - mu[point], its standard error from the fit's covariance, its interval from the t
distribution at those degrees of freedom.

With no residual degrees of freedom (each KD point at one seed, the baseline at two) the model
fits every run exactly: a gain is still the same-seed difference, but sigma cannot be estimated,
so the baselines' own seed spread s_b stands for it (var = s_b^2 c'(X'X)^- c, n_b - 1 degrees of
freedom; a contrast the seeds do not pair is the difference of the points' means, var = s_b^2
sum w^2/n), and the report says so. With fewer than two baseline seeds there is no noise estimate
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


class AdditiveFit:
    """Least squares of y = mu[point] + b[seed] + e without a dense design matrix: the normal
    equations' point and seed blocks are diagonal (counts), so one block is eliminated in
    closed form and only the Schur complement of the smaller one is factored (dense when small,
    sparse LU otherwise). O(rows) to build; 10^5 runs fit in well under a second.

    The seeds of each connected component of the point-seed graph (points linked by a shared
    seed) have one reference level (its first seed: the original model's first seed where it
    has data), so the system is non-singular; a contrast is estimable only when its weights sum
    to zero within every component (no shared seed, no paired comparison)."""

    DENSE_MAX = 2000  # a Schur complement up to this size is factored densely
    DENSE_ROWS_MAX = 5_000_000  # points x seeds up to this: the seed counts held as a dense matrix

    def __init__(self, point: np.ndarray, seed: np.ndarray, y: np.ndarray, n_points: int, n_seeds: int,
                 weight: np.ndarray | None = None):
        """`weight`: each run's 1/variance (weighted least squares; then value_and_variance gives the
        contrast's variance itself, not in units of sigma^2). None: unweighted."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        graph = coo_matrix((np.ones(len(y)), (point, n_points + seed)), shape=(n_points + n_seeds,) * 2)
        _, label = connected_components(graph.tocsr(), directed=False)
        self.component = label[:n_points]
        used_p, p = np.unique(point, return_inverse=True)
        used_s = np.unique(seed)
        components = np.unique(label[used_p])
        self.df = len(y) - (len(used_p) + len(used_s) - len(components))
        # the first seed (in the model's order) of each component is its reference level
        seed_label = label[n_points + used_s]
        reference = {int(c): int(s) for s, c in zip(used_s[::-1], seed_label[::-1])}
        free = np.array([s for s in used_s if reference[int(label[n_points + s])] != s], dtype=int)
        q = np.full(n_seeds, -1)
        q[free] = np.arange(len(free))
        q = q[seed]
        self._p, self._q, self._y = p, q, y
        self._w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)
        self._compressed = np.full(n_points, -1)  # a point's index among the points with data
        self._compressed[used_p] = np.arange(len(used_p))
        self._solve_normal_equations(len(used_p), len(free))

    def _solve_normal_equations(self, n_p: int, n_q: int) -> None:
        from scipy.sparse import coo_matrix, diags

        p, q, y, wt = self._p, self._q, self._y, self._w
        has_q = q >= 0
        self._da = np.bincount(p, weights=wt, minlength=n_p).astype(float)
        db = np.bincount(q[has_q], weights=wt[has_q], minlength=n_q).astype(float)
        aty = np.bincount(p, weights=wt * y, minlength=n_p)
        bty = np.bincount(q[has_q], weights=(wt * y)[has_q], minlength=n_q)
        counts = coo_matrix((wt[has_q], (p[has_q], q[has_q])), shape=(n_p, n_q)).tocsr()
        self._counts = counts
        self._retain_seeds = n_q <= n_p  # factor the smaller Schur complement
        # few seeds (the usual case): each point's seed counts over its runs as a dense row, so a
        # contrast costs a few small products
        self._rows = (counts.toarray() / self._da[:, None]) if self._retain_seeds and n_p * n_q <= self.DENSE_ROWS_MAX \
            else None
        if self._retain_seeds:
            schur = diags(db) - counts.T @ diags(1 / self._da) @ counts
            self._factor(schur)
            b = self._solve(bty - counts.T @ (aty / self._da))
            mu = (aty - counts @ b) / self._da
        else:
            schur = diags(self._da) - counts @ diags(1 / db) @ counts.T
            self._factor(schur)
            mu = self._solve(aty - counts @ (bty / db))
            b = (bty - counts.T @ mu) / db
        self.mu = mu
        fitted = mu[p] + np.where(has_q, b[np.maximum(q, 0)] if n_q else 0.0, 0.0)
        self.residual = y - fitted  # per run, in the order given
        self.rss = float(np.sum(wt * self.residual ** 2))

    def _factor(self, schur) -> None:
        from scipy.linalg import cho_factor, cho_solve
        from scipy.sparse.linalg import splu

        if schur.shape[0] == 0:
            self._solve = lambda v: np.zeros(0)
        elif schur.shape[0] <= self.DENSE_MAX:  # its inverse: each contrast is then one small product
            inverse = cho_solve(cho_factor(schur.toarray()), np.eye(schur.shape[0]))
            self._solve = lambda v: inverse @ v
        else:
            lu = splu(schur.tocsc())
            self._solve = lu.solve

    def estimable(self, idx: np.ndarray, w: np.ndarray) -> bool:
        """Whether sum_i w_i mu[idx_i] is identified: its weights sum to zero in every component."""
        sums: dict = {}
        for c, wi in zip(self.component[idx].tolist(), w.tolist()):
            sums[c] = sums.get(c, 0.0) + wi
        return all(abs(v) <= 1e-9 * max(1.0, float(np.abs(w).sum())) for v in sums.values())

    def value_and_variance(self, idx: np.ndarray, w: np.ndarray) -> tuple[float, float]:
        """(sum_i w_i mu[idx_i], its variance in units of sigma^2: c' (X'X)^- c), from the few
        points a contrast weighs (O(its points), not O(all points))."""
        p = self._compressed[idx]
        if self._rows is not None:
            u = w @ self._rows[p]
            var = float(np.sum(w * w / self._da[p]) + (u @ self._solve(u) if len(u) else 0.0))
        elif self._retain_seeds:
            u = np.zeros(self._counts.shape[1])  # sum_i (w_i / n_i) * point i's row of seed counts
            ptr, cols, vals = self._counts.indptr, self._counts.indices, self._counts.data
            for pi, coef in zip(p.tolist(), (w / self._da[p]).tolist()):
                u[cols[ptr[pi]:ptr[pi + 1]]] += coef * vals[ptr[pi]:ptr[pi + 1]]
            var = float(np.sum(w * w / self._da[p]) + (u @ self._solve(u) if len(u) else 0.0))
        else:
            c = np.zeros(len(self.mu))
            np.add.at(c, p, w)
            var = float(c @ self._solve(c))
        return float(w @ self.mu[p]), var


class PairedFit:
    """The additive point x seed model of one student on one set (or one per-run quantity).

    `cells`: {point key: {seed key: loss}}; `baseline`: the baseline's point key. `families`:
    {point key: comparison family} (fixed-α KD, scheduled α, controls, frontier baselines; the
    baseline and points not named belong to every family): each family gets its own residual
    variance (NoiseFamilies), so that one family's noise never sets another's intervals."""

    def __init__(self, cells: dict, baseline, families: dict | None = None):
        self.baseline = baseline
        self.points = sorted(cells, key=repr)
        self.seeds = sorted({s for c in cells.values() for s in c}, key=repr)
        self.cells = cells
        self._index = {p: i for i, p in enumerate(self.points)}
        seed_index = {s: j for j, s in enumerate(self.seeds)}
        point, seed, ys = [], [], []
        for i, p in enumerate(self.points):
            for s, y in cells[p].items():
                if y is not None and math.isfinite(y):
                    point.append(i)
                    seed.append(seed_index[s])
                    ys.append(float(y))
        self.n = len(ys)
        self._fit, self._fallback, self._n_seeds, self._gains = None, None, {}, {}
        if not ys:
            self.df, self.sigma = 0, None
            self.source = "no runs"
            return
        self.design = (np.asarray(point), np.asarray(seed), np.asarray(ys))  # each run's point, seed, loss
        self._fit = AdditiveFit(*self.design, len(self.points), len(self.seeds))
        self.df = self._fit.df
        self.sigma = math.sqrt(self._fit.rss / self.df) if self.df > 0 else None
        self.source = (f"paired: point x seed model over {self.n} runs of {len(self.points)} points, "
                       f"{self.df} degrees of freedom")
        if self.df == 0:
            self._fallback = self._baseline_spread()
            if self._fallback is not None:
                sd, df = self._fallback
                self.source = (f"paired by seed, no residual degrees of freedom: the baselines' seed spread "
                               f"(sd {sd:.4f}, {df} degrees of freedom) stands for each run's noise")
            else:
                self.source = "no noise estimate (one baseline seed, one seed per point)"
        self.families = NoiseFamilies(self, families) if families and self._fallback is None and self.df > 0 \
            else None
        if self.families is not None and self.families.active:
            self.source += "; " + self.families.describe()

    def _baseline_spread(self) -> tuple[float, int] | None:
        base = [v for v in self.cells.get(self.baseline, {}).values() if v is not None and math.isfinite(v)]
        if len(base) < 2:
            return None
        return float(np.std(base, ddof=1)), len(base) - 1

    def point_index(self, point) -> int:
        """A point's row in the fit (a dict look-up: asked once per contrast)."""
        return self._index[point]

    def n_seeds(self, point) -> int:
        if point not in self._n_seeds:  # asked once per contrast: counted once per point
            self._n_seeds[point] = sum(1 for v in self.cells.get(point, {}).values()
                                       if v is not None and math.isfinite(v))
        return self._n_seeds[point]

    def mean(self, point) -> float:
        vals = [v for v in self.cells.get(point, {}).values() if v is not None and math.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan

    def contrast(self, weights: dict) -> Estimate:
        """sum_p w_p mu_p (weights must sum to zero: a difference of points, so the seed
        effects cancel)."""
        if self._fit is None or any(p not in self._index or self.n_seeds(p) == 0 for p in weights):
            return Estimate(math.nan, None, 0)
        if self.families is not None and self.families.active:
            return self.families.contrast(weights)
        return self.pooled_contrast(weights)

    def pooled_contrast(self, weights: dict) -> Estimate:
        """The contrast with one residual variance pooled over every run of the fit."""
        idx = np.array([self._index[p] for p in weights], dtype=int)
        w = np.array(list(weights.values()), dtype=float)
        if self._fallback is not None or self.df == 0:
            # No residual degrees of freedom: the exact fit's value (a gain is the same-seed
            # difference) where the seeds pair the points, else the difference of their raw means
            # (each mean's variance sd^2/n); the baselines' seed spread sd stands for sigma.
            if self._fit.estimable(idx, w):
                value, var = self._fit.value_and_variance(idx, w)
            else:
                value = sum(w_p * self.mean(p) for p, w_p in weights.items())
                var = sum(w_p * w_p / self.n_seeds(p) for p, w_p in weights.items())
            if self._fallback is None:
                return Estimate(value, None, 0)
            sd, df = self._fallback
            return Estimate(value, sd * math.sqrt(max(0.0, var)), df)
        if not self._fit.estimable(idx, w):  # points that share no seed, directly or through others
            return Estimate(math.nan, None, 0)
        value, var = self._fit.value_and_variance(idx, w)
        se = self.sigma * math.sqrt(max(0.0, var))
        return Estimate(value, se, self.df)

    def gain(self, point) -> Estimate:
        """The baseline's loss minus the point's (positive: distillation helped)."""
        if point == self.baseline:
            return Estimate(0.0, 0.0, max(self.df, 1))
        if point not in self._gains:  # the table, best α and three claims each ask for it
            self._gains[point] = self.contrast({self.baseline: 1.0, point: -1.0})
        return self._gains[point]

    def runs(self) -> tuple[list, np.ndarray]:
        """(each run's point key, its residual in the pooled fit), in the fit's run order."""
        order = [p for p in self.points for s, y in self.cells[p].items() if y is not None and math.isfinite(y)]
        return order, self._fit.residual

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


# --- noise per comparison family ---------------------------------------------------------
# A residual variance per comparison family of a sweep (fixed-α KD points, scheduled α,
# controls, baselines at other lengths): the runs of study v2 do not share one noise level (the
# schedule points' residual variance is 3x the fixed-α points'), and one pooled sigma lets the
# control's or the frontier's runs move the intervals of real-teacher verdicts.
#
# Each family's sigma comes from the point x seed model fitted to that family's runs and the
# baseline's only, with that fit's degrees of freedom. A contrast within one family (a gain: the
# family's points and the baseline) is read from the family's own fit, so it is exactly unchanged
# when another family's runs change. A contrast across families (a schedule against the best fixed
# α, a teacher beyond the control) is read from weighted least squares over every run, each run
# weighted by 1/sigma^2 of its family, at Welch-Satterthwaite's degrees of freedom (rounded
# down). Levene's test (median-centred, scipy) on the pooled fit's residuals says whether the
# families' variances differ.
MIN_LEVENE_RUNS = 3  # a family with fewer residuals joins no variance test


class NoiseFamilies:
    """The families of one PairedFit: their fits, sigmas and the cross-family weighted fit."""

    def __init__(self, fit: PairedFit, families: dict):
        self.fit = fit
        self.family_of = {p: families.get(p) for p in fit.points if fit.n_seeds(p)}
        self.names = sorted({f for f in self.family_of.values() if f is not None})
        self.active = len(self.names) >= 2  # one family: the pooled fit is already its own
        self.own: dict = {}  # family -> its PairedFit (the family's points and the shared ones)
        for f in self.names if self.active else []:
            sub = PairedFit({p: fit.cells[p] for p, g in self.family_of.items() if g in (f, None)}, fit.baseline)
            self.own[f] = sub if sub.sigma and sub.df > 0 and sub.source.startswith("paired") else None
        sizes = {f: sum(g == f for g in self.family_of.values()) for f in self.names}
        # the baseline and other shared points are read with the largest family (the fixed-α points)
        self.home = max(self.names, key=lambda f: (sizes[f], f)) if self.names else None
        self._weighted = None

    def sigma_df(self, family: str) -> tuple[float, int]:
        own = self.own.get(family)
        return (own.sigma, own.df) if own is not None else (self.fit.sigma, self.fit.df)

    def contrast(self, weights: dict) -> Estimate:
        fams = {self.family_of.get(p) for p in weights} - {None}
        if len(fams) <= 1:
            own = self.own.get(fams.pop() if fams else self.home)
            return own.contrast(weights) if own is not None else self.fit.pooled_contrast(weights)
        return self._across(weights, fams)

    def _across(self, weights: dict, fams: set) -> Estimate:
        if self._weighted is None:
            point, seed, y = self.fit.design
            var = np.array([self.sigma_df(self.family_of.get(self.fit.points[i]) or self.home)[0] ** 2
                            for i in range(len(self.fit.points))])
            self._weighted = AdditiveFit(point, seed, y, len(self.fit.points), len(self.fit.seeds),
                                         weight=1.0 / var[point])
        idx = np.array([self.fit.point_index(p) for p in weights], dtype=int)
        w = np.array(list(weights.values()), dtype=float)
        if not self._weighted.estimable(idx, w):
            return Estimate(math.nan, None, 0)
        value, var = self._weighted.value_and_variance(idx, w)
        return Estimate(value, math.sqrt(max(0.0, var)), self._satterthwaite_df(weights))

    def _satterthwaite_df(self, weights: dict) -> int:
        """Welch-Satterthwaite's degrees of freedom of a sum of the families' variances, each
        family's share taken as sigma_f^2 sum_p w_p^2 / n_p over its points (the complete design's)."""
        share: dict = {}
        for p, w in weights.items():
            f = self.family_of.get(p) or self.home
            share[f] = share.get(f, 0.0) + self.sigma_df(f)[0] ** 2 * w * w / self.fit.n_seeds(p)
        den = sum(v * v / self.sigma_df(f)[1] for f, v in share.items())
        return max(1, int(sum(share.values()) ** 2 / den)) if den > 0 else min(self.sigma_df(f)[1] for f in share)

    def variance_test(self) -> tuple[float, float] | None:
        """(Levene's W, its p) over the families' residuals in the pooled fit (the shared points'
        runs with the home family), or None with fewer than two families of 3+ runs."""
        if not hasattr(self, "_variance_test"):  # asked by the noise line and the report: computed once
            self._variance_test = self._levene()
        return self._variance_test

    def _levene(self) -> tuple[float, float] | None:
        from scipy.stats import levene

        keys, resid = self.fit.runs()
        groups = [resid[[(self.family_of.get(k) or self.home) == f for k in keys]] for f in self.names]
        groups = [g for g in groups if len(g) >= MIN_LEVENE_RUNS]
        if len(groups) < 2:
            return None
        res = levene(*groups, center="median")
        return float(res.statistic), float(res.pvalue)

    def summary(self) -> dict:
        """{family: {sigma, df, points, own}} and the variance test, for the report."""
        out = {f: {"sigma": self.sigma_df(f)[0], "df": self.sigma_df(f)[1], "own": self.own.get(f) is not None,
                   "points": sum(g == f for g in self.family_of.values())} for f in self.names}
        return {"families": out, "levene": self.variance_test()}

    def describe(self) -> str:
        parts = [f"{f} {v['sigma']:.4f} ({v['df']} df" + ("" if v["own"] else ", pooled: too few runs of its own")
                 + ")" for f, v in self.summary()["families"].items()]
        test = self.variance_test()
        said = f"residual sd per comparison family: {', '.join(parts)}"
        if test is not None:
            said += (f"; Levene's test (median) across families: W = {test[0]:.2f}, p = {test[1]:.3g}"
                     + (" (their variances differ)" if test[1] < 0.05 else ""))
        return said
