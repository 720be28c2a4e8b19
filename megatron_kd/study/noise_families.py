"""A residual variance per comparison family of a sweep (fixed-α KD points, scheduled α,
controls, baselines at other lengths): the runs of study v2 do not share one noise level (the
schedule points' residual variance is 3x the fixed-α points'), and one pooled sigma lets the
control's or the frontier's runs move the intervals of real-teacher verdicts.

Each family's sigma comes from the point x seed model fitted to that family's runs and the
baseline's only, with that fit's degrees of freedom. A contrast within one family (a gain: the
family's points and the baseline) is read from the family's own fit, so it is exactly unchanged
when another family's runs change. A contrast across families (a schedule against the best fixed
α, a teacher beyond the control) is read from weighted least squares over every run, each run
weighted by 1/sigma^2 of its family, at Welch-Satterthwaite's degrees of freedom (rounded
down). Levene's test (median-centred, scipy) on the pooled fit's residuals says whether the
families' variances differ.
"""

from __future__ import annotations

import math

import numpy as np

from megatron_kd.study.paired import AdditiveFit, Estimate, PairedFit

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
