"""The distillation scaling law of Busbridge et al. 2025 ("Distillation Scaling Laws"), fitted
from a team's own runs (`mkd fit`), as `mkd advise` uses it.

Supervised law (the student's architecture trained alone on D tokens, N parameters):
    L~(N, D) = E + (A / N^alpha + B / D^beta)^gamma
Distillation law (the student's loss from a teacher of loss L_T), fitted per KD mix alpha_kd:
    L_S = L_T + L_T^(-c0) * (1 + (L_T / (d1 * L~_S))^(1/f1))^(-c1 * f1) * (L~_S - E)
with L~_S = L~(N_S, D_S). The published law has its own student term (A'/N^alpha' + B'/D^beta')^gamma';
here it is the supervised law's (L~_S - E: A' = A, alpha' = alpha, ...), because a sweep of a few
sizes cannot identify nine parameters beside the supervised six; the four left say how the
teacher's loss and the teacher/student ratio move the student off its supervised term.

Fitting: least squares on log-loss residuals with a Huber loss (robust to a diverged run), from
a grid of starts (the best kept); intervals from a bootstrap over runs; a held-out check that
refits without the largest (N, D) cell and predicts it. A sweep with one student size cannot
identify the N term (A, alpha: alpha is fixed at 0 and A absorbs A / N^alpha), one budget the D
term: the fit says so and predictions off that size or budget are refused. N counts
non-embedding parameters (at toy scale the embedding is most of a model), D training tokens;
repetition is not modelled, so the fit keeps to runs within `max_tokens` (one epoch) when given.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from megatron_kd.errors import ConfigError

SUPERVISED = ("E", "A", "alpha", "B", "beta", "gamma")
DISTILLATION = ("c0", "c1", "d1", "f1")
HUBER_DELTA = 1e-3  # on log-loss: residuals beyond 0.1 % count linearly
# Bounds on what enters the law (flags, table cells, law.json): far past any real run, yet small
# enough that the products the law and the advisor form (6 N D, budget x students) stay finite.
MAX_PARAMS = 1e15
MAX_TOKENS = 1e18
MAX_FLOPS = 1e40


def checked_number(value, what: str, fix: str, low: float | None = None, high: float | None = None,
                   low_open: bool = False) -> float:
    """`value` as a finite float in [low, high] ((low, high] with `low_open`), else one ConfigError
    line that names `what` and ends with `fix`. A bool, a string, NaN or an infinity is refused:
    each would pass through the law's arithmetic as a NaN or an inf prediction."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what}: {str(value)[:40]!r} is not a number; {fix}")
    try:
        x = float(value)
    except OverflowError:  # an integer past a float's range
        x = math.inf
    if math.isnan(x):
        raise ConfigError(f"{what} is not a number (NaN); {fix}")
    if not math.isfinite(x):
        raise ConfigError(f"{what} is {x} (not a finite number); {fix}")
    too_low = low is not None and (x <= low if low_open else x < low)
    if too_low or (high is not None and x > high):
        if low is not None and high is not None:
            bound = f"in {'(' if low_open else '['}{_shown(low)}, {_shown(high)}]"
        else:
            bound = f"{'>' if low_open else '>='} {_shown(low)}" if low is not None else f"<= {_shown(high)}"
        raise ConfigError(f"{what} must be {bound}, got {_shown(x)}; {fix}")
    return x


def _shown(x: float) -> str:
    """A bound or value as a reader wants it: 4294967295 whole, 1e+15 short."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e10 else f"{x:g}"


@dataclass(frozen=True)
class Run:
    name: str
    N: float  # student (non-embedding) parameters
    D: float  # student training tokens
    loss: float
    teacher_loss: float | None = None  # None: a supervised run
    alpha: float | None = None  # the KD mix


def supervised_loss(p: dict, N, D):
    return p["E"] + (p["A"] / np.power(N, p["alpha"]) + p["B"] / np.power(D, p["beta"])) ** p["gamma"]


def distilled_loss(p: dict, sup: dict, L_T, N, D):
    L_s = supervised_loss(sup, N, D)
    ratio = np.power(L_T / (p["d1"] * L_s), 1.0 / p["f1"])
    return L_T + np.power(L_T, -p["c0"]) * np.power(1.0 + ratio, -p["c1"] * p["f1"]) * (L_s - sup["E"])


@dataclass
class Fit:
    params: dict
    fixed: dict  # name -> why it is not identified (held at a value)
    n_runs: int
    rmse_log: float  # root mean square of log(pred) - log(loss)
    samples: list = field(default_factory=list)  # bootstrap parameter sets
    held_out: dict | None = None

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float] | None:
        xs = [s[name] for s in self.samples if name in s]
        if len(xs) < 10:
            return None
        lo, hi = np.quantile(xs, [(1 - level) / 2, 1 - (1 - level) / 2])
        return float(lo), float(hi)


def _huber(r: np.ndarray) -> float:
    a = np.abs(r)
    return float(np.sum(np.where(a <= HUBER_DELTA, 0.5 * r ** 2, HUBER_DELTA * (a - 0.5 * HUBER_DELTA))))


def _least_squares(residual, starts: list[np.ndarray], keep: int = 4):
    """The best of the solutions from the `keep` starts with the lowest initial loss (a grid of
    starts is cheap to evaluate, each solve is not)."""
    from scipy.optimize import least_squares

    if len(starts) > keep:
        with np.errstate(all="ignore"):
            costs = [_huber(residual(x)) for x in starts]
        starts = [starts[i] for i in np.argsort(np.nan_to_num(costs, nan=np.inf))[:keep]]
    best = None
    for x0 in starts:
        try:
            r = least_squares(residual, x0, loss="huber", f_scale=HUBER_DELTA, max_nfev=400, method="trf")
        except (ValueError, FloatingPointError):
            continue
        if np.all(np.isfinite(r.fun)) and (best is None or r.cost < best.cost):
            best = r
    if best is None:
        raise ConfigError("the law's fit found no finite solution from any start; check the runs' losses")
    return best


# --- the supervised law ---------------------------------------------------------------------

def _sup_layout(runs: list[Run]) -> tuple[list[str], dict]:
    """Which supervised parameters are free, and why the others are fixed."""
    fixed = {}
    if len({r.N for r in runs}) < 2:
        fixed["alpha"] = "one student size: the N term is a constant (A absorbs A / N^alpha)"
    if len({r.D for r in runs}) < 2:
        fixed["beta"] = "one training budget: the D term is a constant (B absorbs B / D^beta)"
    if len(fixed) == 2:
        raise ConfigError("the supervised law needs runs at more than one (size, tokens) cell; add baselines "
                          "at other lengths (baseline_steps) or sizes")
    return [k for k in SUPERVISED if k not in fixed], fixed


def _sup_unpack(x, free, fixed) -> dict:
    p = {k: math.exp(v) for k, v in zip(free, x)}
    return p | {k: 0.0 for k in fixed}


def fit_supervised(runs: list[Run], bootstrap: int = 200, seed: int = 0, held_out: bool = True) -> Fit:
    runs = [r for r in runs if r.teacher_loss is None]
    free, fixed = _sup_layout(runs)
    if len(runs) < len(free) + 1:
        raise ConfigError(f"the supervised law has {len(free)} free parameters but only {len(runs)} supervised "
                          "runs; add baselines at more sizes or lengths")
    N, D, L = (np.array([getattr(r, k) for r in runs], dtype=float) for k in ("N", "D", "loss"))

    def residual_for(n, d, loss):
        def residual(x):
            with np.errstate(all="ignore"):
                pred = supervised_loss(_sup_unpack(x, free, fixed), n, d)
            return np.where(pred > 0, np.log(np.abs(pred) + 1e-300) - np.log(loss), 10.0)
        return residual

    starts = []
    for e_frac, a, b, g in itertools.product((0.3, 0.7, 0.9), (0.2, 0.5), (0.2, 0.5), (0.5, 1.0, 2.0)):
        E = e_frac * L.min()
        excess = max(np.mean(L) - E, 1e-3) ** (1 / g) / (2 if not fixed else 1)
        p = {"E": E, "A": excess * np.median(N) ** a, "alpha": a, "B": excess * np.median(D) ** b, "beta": b,
             "gamma": g}
        if "alpha" in fixed:
            p["A"] = excess
        if "beta" in fixed:
            p["B"] = excess
        starts.append(np.log([p[k] for k in free]))
    best = _least_squares(residual_for(N, D, L), starts)
    params = _sup_unpack(best.x, free, fixed)
    fit = Fit(params, fixed, len(runs), float(np.sqrt(np.mean(residual_for(N, D, L)(best.x) ** 2))))
    rng = np.random.default_rng(seed)
    for _ in range(bootstrap):  # over runs, each refit from the best solution
        i = rng.integers(0, len(runs), len(runs))
        if len({(N[j], D[j]) for j in i}) < 2:
            continue
        r = _least_squares(residual_for(N[i], D[i], L[i]), [best.x])
        fit.samples.append(_sup_unpack(r.x, free, fixed))
    if held_out:
        fit.held_out = _held_out(runs, lambda rest: fit_supervised(rest, 0, seed, False),
                                 lambda f, r: float(supervised_loss(f.params, r.N, r.D)),
                                 lambda f: set(f.fixed) == set(fixed))
    return fit


def _held_out(runs: list[Run], refit, predict, identified=lambda f: True) -> dict | None:
    """Refit without the largest (N, D) cell and predict its runs: the law's extrapolation error."""
    cells = sorted({(r.N, r.D) for r in runs})
    top = cells[-1]
    rest = [r for r in runs if (r.N, r.D) != top]
    try:
        f = refit(rest)
    except ConfigError as exc:  # too few runs without it: say so instead
        return {"cell": list(top), "skipped": str(exc)}
    held = [r for r in runs if (r.N, r.D) == top]
    if not identified(f):
        return {"cell": list(top), "skipped": "without it the sweep has one size or budget left"}
    pred = float(np.mean([predict(f, r) for r in held]))
    obs = float(np.mean([r.loss for r in held]))
    return {"cell": list(top), "predicted": pred, "measured": obs, "error": pred - obs,
            "relative_error": (pred - obs) / obs}


# --- the distillation law ---------------------------------------------------------------------

def fit_distillation(runs: list[Run], sup: Fit, bootstrap: int = 200, seed: int = 0,
                     held_out: bool = True) -> dict[float, Fit | str]:
    """One fit per KD mix alpha; a mix the sweep cannot identify gets the reason instead."""
    out: dict[float, Fit | str] = {}
    kd = [r for r in runs if r.teacher_loss is not None]
    for a in sorted({r.alpha for r in kd}):
        rows = [r for r in kd if r.alpha == a]
        teachers = len({r.teacher_loss for r in rows})
        if teachers < 3 or len(rows) < len(DISTILLATION) + 1:
            out[a] = (f"{len(rows)} runs from {teachers} teacher(s): the distillation law's 4 parameters need "
                      "at least 3 teachers and 5 runs")
            continue
        out[a] = _fit_one_mix(rows, sup, bootstrap, seed, held_out)
    return out


def _dist_unpack(x) -> dict:
    return {"c0": float(x[0]), "c1": math.exp(x[1]), "d1": math.exp(x[2]), "f1": math.exp(x[3])}


def _fit_one_mix(rows: list[Run], sup: Fit, bootstrap: int, seed: int, held_out: bool) -> Fit:
    N, D, L, T = (np.array([getattr(r, k) for r in rows], dtype=float) for k in ("N", "D", "loss", "teacher_loss"))

    def residual_for(n, d, loss, t, s=sup.params):
        def residual(x):
            with np.errstate(all="ignore"):
                pred = distilled_loss(_dist_unpack(x), s, t, n, d)
            return np.where(np.isfinite(pred) & (pred > 0), np.log(np.abs(pred) + 1e-300) - np.log(loss), 10.0)
        return residual

    starts = [np.array([c0, math.log(c1), math.log(d1), math.log(f1)])
              for c0, c1, d1, f1 in itertools.product((-1.0, 0.0, 1.0), (0.5, 2.0), (0.5, 1.0, 2.0), (0.3, 1.0))]
    best = _least_squares(residual_for(N, D, L, T), starts)
    fit = Fit(_dist_unpack(best.x), {}, len(rows), float(np.sqrt(np.mean(residual_for(N, D, L, T)(best.x) ** 2))))
    rng = np.random.default_rng(seed)
    for b in range(bootstrap):  # runs resampled, each with a supervised law of the same bootstrap
        i = rng.integers(0, len(rows), len(rows))
        s = sup.samples[b % len(sup.samples)] if sup.samples else sup.params
        r = _least_squares(residual_for(N[i], D[i], L[i], T[i], s), [best.x])
        fit.samples.append(_dist_unpack(r.x))
    if held_out:
        fit.held_out = _held_out(rows, lambda rest: _fit_one_mix(rest, sup, 0, seed, False),
                                 lambda f, r: float(distilled_loss(f.params, sup.params, r.teacher_loss, r.N, r.D)))
    fit.fixed = {}
    below = sum(1 for r in rows if r.loss < r.teacher_loss)
    if below:  # the law's form has L_S > L_T: a student that beat its teacher is out of its reach
        fit.fixed["form"] = (f"{below} of {len(rows)} runs beat their teacher (L_S < L_T), which the law's form "
                             "cannot express: its fit there is a floor, not a fit")
    return fit
