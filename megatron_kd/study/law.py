"""Scaling laws fitted from a team's own runs (`mkd fit`), as `mkd advise` uses them.

Supervised law (the student's architecture trained alone on D tokens, N parameters):
    L_B(N, D) = E + (A / N^alpha + B / D^beta)^gamma
Distillation laws, one per KD mix alpha_kd, in one of two forms (study/law_cv.py picks and scores):
- "mix":       L_S = L_B + m * (L_T - L_B). m = 0 is "the teacher adds nothing" (the law nests the
               no-KD predictor), 0 < m < 1 lets a student end below a teacher weaker than itself
               would allow under Busbridge's form: the mixed objective (alpha_kd < 1) keeps half
               of its pull on the data.
- "busbridge": Busbridge et al. 2025 ("Distillation Scaling Laws"), for pure distillation only:
               L_S = L_T + L_T^(-c0) * (1 + (L_T / (d1 * L_B))^(1/f1))^(-c1 * f1) * (L_B - E)
               (its student term is the supervised law's: a sweep of a few sizes cannot identify
               nine parameters beside the supervised six). It forces L_S > L_T.

Fitting: plain least squares on log-loss residuals (residuals of 1-5 % are the runs' noise, not
outliers: a robust loss with a small scale would be an L1 fit in disguise), each free parameter
in log space inside wide bounds, from many starts, polished until a restart from the optimum no
longer lowers the cost by 0.1 %. A parameter that ends on its bound is named (e.g. beta -> 0: the D
term is exponential there, and only a combination of beta and gamma is identified). Intervals
come from a bootstrap over runs, each resample refitted from several starts. A sweep with one
student size cannot identify the N term (alpha is held at 0, A absorbs A / N^alpha), one budget
the D term. N counts FLOP parameters (models/flops.py: the work per token in weight units, the
report's currency; `mkd fit --params` keeps non-embedding or total counts as stated options), D
training tokens; repetition is not modelled.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from megatron_kd.errors import ConfigError

FORMAT = "megatron_kd.law/1"  # law.json's version tag: `mkd fit` writes it (law_io.py), `mkd advise` reads it
GAIN_COLUMNS = ("N", "D", "alpha", "teacher_loss", "loss", "baseline_loss")  # law.json's measured gains
PARAMETERS = ("flop", "non-embedding", "total")  # what a law's N counts; "flop" is the report's currency
SUPERVISED = ("E", "A", "alpha", "B", "beta", "gamma")
DISTILLATION = ("c0", "c1", "d1", "f1")  # Busbridge et al.'s form
MIX = ("m",)
FORMS = {"mix": MIX, "busbridge": DISTILLATION}
REFIT_TOLERANCE = 1e-3  # a restart from the reported optimum may lower the cost by at most 0.1 %
BOOTSTRAP_TOL = 1e-8  # a bootstrap refit (300 evaluations at most from each of its starts) stops here:
# its spread is the interval, not its last digits
# Bounds on what enters the law (flags, table cells, law.json): far past any real run, yet small
# enough that the products the law and the advisor form (6 N D, budget x students) stay finite.
MAX_PARAMS = 1e15
MAX_TOKENS = 1e18
MAX_FLOPS = 1e40
MAX_LOSS = 1e6  # nats/token, as the results table bounds its losses: 10^308 is not a loss
# A row's numbers the fit reads or carries, and the results table's cells (one rule for both):
# field -> (low, high, low excluded). A student has at least one parameter; a teacher's 0 parameters
# is the unigram control's (left out of the law, not refused). teacher_pass_shared_by is fractional
# when a pass's readers have several lengths (study/report.py), so only > 0.
ROW_BOUNDS = {
    "student_params": (1, MAX_PARAMS, False), "student_nonembedding_params": (0, MAX_PARAMS, True),
    "teacher_params": (0, MAX_PARAMS, False), "teacher_nonembedding_params": (0, MAX_PARAMS, False),
    "student_tokens": (0, MAX_TOKENS, True),
    "teacher_tokens": (0, MAX_TOKENS, False), "alpha": (0, 1, False),
    "student_flops": (0, MAX_FLOPS, False), "teacher_pretrain_flops": (0, MAX_FLOPS, False),
    "teacher_pass_flops": (0, MAX_FLOPS, False), "teacher_pass_shared_by": (0, 1e9, True),
    "temperature": (0, 1e6, True), "top_k": (1, 1e12, False), "seed": (0, 2**32 - 1, False),
    "data_seed": (0, 2**32 - 1, False), "seq_length": (0, 1e9, True),
}


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
class FitPoint:
    """One run as the laws fit it (law_io.fit_point projects a study RunRow to it)."""

    name: str
    N: float  # student parameters as law.json's `parameters` counts them (default: FLOP parameters)
    D: float  # student training tokens
    loss: float
    teacher_loss: float | None = None  # None: a supervised run
    alpha: float | None = None  # the KD mix
    N_T: float | None = None  # the teacher's parameters, counted as N is (None: not known / no teacher)
    total_params: bool = False  # N or N_T is total parameters: flops.py's fallback for a row without FLOPs


def supervised_loss(p: dict, N, D):
    return p["E"] + (p["A"] / np.power(N, p["alpha"]) + p["B"] / np.power(D, p["beta"])) ** p["gamma"]


def distilled_loss(p: dict, sup: dict, L_T, N, D):
    L_s = supervised_loss(sup, N, D)
    ratio = np.power(L_T / (p["d1"] * L_s), 1.0 / p["f1"])
    return L_T + np.power(L_T, -p["c0"]) * np.power(1.0 + ratio, -p["c1"] * p["f1"]) * (L_s - sup["E"])


def mixed_loss(p: dict, sup: dict, L_T, N, D):
    """The supervised law moved a fraction m of the way to the teacher's loss."""
    L_b = supervised_loss(sup, N, D)
    return L_b + p["m"] * (L_T - L_b)


def kd_loss(form: str, p: dict, sup: dict, L_T, N, D):
    return (mixed_loss if form == "mix" else distilled_loss)(p, sup, L_T, N, D)


@dataclass
class Fit:
    params: dict
    fixed: dict  # name -> why it is not identified (held at a value)
    n_runs: int
    rmse_log: float  # root mean square of log(pred) - log(loss)
    samples: list = field(default_factory=list)  # bootstrap parameter sets
    held_out: dict | None = None
    form: str = "supervised"
    solver: dict = field(default_factory=dict)  # the optimiser's status, cost and the refit check
    boundary: dict = field(default_factory=dict)  # name -> what an optimum on its bound means
    cv: dict | None = None  # leave-one-cell-out errors (study/law_cv.py)

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float] | None:
        xs = [s[name] for s in self.samples if name in s]
        if len(xs) < 10:
            return None
        lo, hi = np.quantile(xs, [(1 - level) / 2, 1 - (1 - level) / 2])
        return float(lo), float(hi)


class Progress:
    """A line at most every `every` seconds (a long bootstrap is not silent), none if `say` is None."""

    def __init__(self, say=None, every: float = 10.0):
        self.say, self.every, self.last = say, every, time.monotonic()

    def stage(self, what: str) -> None:
        """A stage begins: said at once (a stage that counts nothing is not silent till its end)."""
        if self.say is not None:
            self.say(what)
            self.last = time.monotonic()

    def tick(self, what: str, i: int, n: int) -> None:
        if self.say is not None and time.monotonic() - self.last >= self.every:
            self.say(f"{what} {i}/{n}")
            self.last = time.monotonic()


# --- the solver ---------------------------------------------------------------------------------

def _cost(residual, x) -> float:
    with np.errstate(all="ignore"):
        r = residual(x)
    return float(0.5 * np.sum(r ** 2)) if np.all(np.isfinite(r)) else math.inf


def _solve(residual, x0, bounds, tol: float = 1e-12, max_nfev: int = 2000):
    """One bounded solve; a residual with a `jac` attribute brings its analytic Jacobian."""
    from scipy.optimize import least_squares

    return least_squares(residual, np.clip(x0, *bounds), jac=getattr(residual, "jac", "2-point"), bounds=bounds,
                         method="trf", ftol=tol, xtol=tol, gtol=tol, max_nfev=max_nfev)


def _least_squares(residual, starts: list[np.ndarray], bounds, keep: int = 4, polish: bool = True):
    """The best of the solutions from the `keep` starts with the lowest initial cost (a grid of
    starts is cheap to evaluate, each solve is not), then polished: solved again from its own
    optimum until a restart lowers the cost by less than REFIT_TOLERANCE (a bootstrap refit, one of
    hundreds, is not: `polish` False). Returns (x, solver)."""
    if len(starts) > keep:
        costs = [_cost(residual, np.clip(x, *bounds)) for x in starts]
        starts = [starts[i] for i in np.argsort(costs)[:keep]]
    best = None
    for x0 in starts:
        try:
            r = _solve(residual, x0, bounds, *((1e-12, 2000) if polish else (BOOTSTRAP_TOL, 300)))
        except (ValueError, FloatingPointError):
            continue
        if np.all(np.isfinite(r.fun)) and (best is None or r.cost < best.cost):
            best = r
    if best is None:
        raise ConfigError("the law's fit found no finite solution from any start; check the runs' losses")
    for _ in range(5 if polish else 0):
        again = _solve(residual, best.x, bounds)
        drop = (best.cost - again.cost) / max(best.cost, 1e-300)
        if again.cost < best.cost:
            best = again
        if drop < REFIT_TOLERANCE / 10:
            break
    return best.x, {"status": int(best.status), "message": str(best.message), "cost": float(best.cost),
                    "nfev": int(best.nfev)}


def refit_drop(residual, x, bounds) -> float:
    """How much a restart from `x` lowers the cost, relative (the convergence check)."""
    before = _cost(residual, x)
    return (before - float(_solve(residual, x, bounds).cost)) / max(before, 1e-300)


def _at_bounds(names, x, bounds, notes: dict) -> dict:
    """Each parameter whose optimum is on its bound, with what that means (`notes`, else generic)."""
    out = {}
    for k, v, lo, hi in zip(names, x, *bounds):
        side = "low" if v - lo < 1e-3 else "high" if hi - v < 1e-3 else None
        if side:
            out[k] = notes.get((k, side), f"{k} ends on its {side} bound: the data push it past any finite value")
    return out


# --- the supervised law ---------------------------------------------------------------------

SUP_BOUNDS = {"E": (1e-3, None), "A": (1e-12, 1e20), "alpha": (1e-4, 3.0), "B": (1e-12, 1e20),
              "beta": (1e-4, 3.0), "gamma": (1e-2, 100.0)}
# E's upper bound is the lowest loss; gamma's 100 stops the exponential ridge (beta -> 0, gamma -> inf),
# along which the cost falls by under 1 % while a solver crawls for thousands of evaluations.
SUP_BOUNDARY = {
    ("beta", "low"): "β→0: the D term is exponential here (B/D^β ≈ B·(1 − β·ln D)); only β·γ is identified",
    ("alpha", "low"): "α→0: the N term is exponential here (A/N^α ≈ A·(1 − α·ln N)); only α·γ is identified",
    ("gamma", "high"): "γ at its bound (100): the runs ask for the exponential limit (β or α → 0, γ → ∞), where "
                       "only β·γ (α·γ) is identified",
    ("E", "low"): "E→0: the runs do not reach the irreducible loss; E is a floor, not an estimate",
    ("E", "high"): "E at the lowest measured loss: the runs flatten out at their best",
}


def supervised_layout(runs: list[FitPoint]) -> tuple[list[str], dict]:
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


def _sup_problem(runs: list[FitPoint]):
    """(free, fixed, residual_for(indices), bounds, starts) of the supervised fit on `runs`."""
    free, fixed = supervised_layout(runs)
    if len(runs) < len(free) + 1:
        raise ConfigError(f"the supervised law has {len(free)} free parameters but only {len(runs)} supervised "
                          "runs; add baselines at more sizes or lengths")
    N, D, L = (np.array([getattr(r, k) for r in runs], dtype=float) for k in ("N", "D", "loss"))

    def residual_for(i):
        def residual(x):
            with np.errstate(all="ignore"):
                pred = supervised_loss(_sup_unpack(x, free, fixed), N[i], D[i])
            return np.where(pred > 0, np.log(np.abs(pred) + 1e-300) - np.log(L[i]), 10.0)
        residual.jac = lambda x: _sup_jacobian(_sup_unpack(x, free, fixed), free, N[i], D[i])
        return residual

    box = SUP_BOUNDS | {"E": (1e-3, float(L.min()))}
    bounds = (np.log([box[k][0] for k in free]), np.log([box[k][1] for k in free]))
    starts = []
    for e_frac, a, b, g in itertools.product((0.3, 0.7, 0.9), (0.2, 0.5), (0.05, 0.2, 0.5), (0.5, 1.0, 2.0, 8.0)):
        E = e_frac * L.min()
        excess = max(np.mean(L) - E, 1e-3) ** (1 / g) / (2 if not fixed else 1)
        p = {"E": E, "A": excess * np.median(N) ** a, "alpha": a, "B": excess * np.median(D) ** b, "beta": b,
             "gamma": g}
        if "alpha" in fixed:
            p["A"] = excess
        if "beta" in fixed:
            p["B"] = excess
        starts.append(np.log([p[k] for k in free]))
    return free, fixed, residual_for, bounds, starts


def _sup_jacobian(p: dict, free: list[str], N, D) -> np.ndarray:
    """d log L_B / d log(parameter), one column per free parameter (analytic: a finite-difference
    Jacobian costs seven evaluations per step, and the bootstrap takes hundreds of fits)."""
    with np.errstate(all="ignore"):
        n_term, d_term = p["A"] * np.power(N, -p["alpha"]), p["B"] * np.power(D, -p["beta"])
        S = n_term + d_term
        inner = p["gamma"] * np.power(S, p["gamma"] - 1)
        pred = p["E"] + np.power(S, p["gamma"])
        cols = {"E": np.full_like(S, p["E"]), "A": inner * n_term, "alpha": -inner * n_term * np.log(N) * p["alpha"],
                "B": inner * d_term, "beta": -inner * d_term * np.log(D) * p["beta"],
                "gamma": np.power(S, p["gamma"]) * np.log(S) * p["gamma"]}
        J = np.stack([cols[k] for k in free], axis=1) / pred[:, None]
    return np.where(np.isfinite(J) & (pred[:, None] > 0), J, 0.0)


def fit_supervised(runs: list[FitPoint], bootstrap: int = 200, seed: int = 0, held_out: bool = True,
                   progress: Progress | None = None, starts_kept: int = 6) -> Fit:
    """The supervised law on `runs`' baselines, solved from the `starts_kept` most promising starts
    (a cross-validation refit, one of many, keeps fewer)."""
    runs = [r for r in runs if r.teacher_loss is None]
    free, fixed, residual_for, bounds, starts = _sup_problem(runs)
    everything = np.arange(len(runs))
    x, solver = _least_squares(residual_for(everything), starts, bounds, keep=starts_kept)
    solver["refit_drop"] = refit_drop(residual_for(everything), x, bounds)
    fit = Fit(_sup_unpack(x, free, fixed), fixed, len(runs), float(np.sqrt(np.mean(residual_for(everything)(x) ** 2))),
              solver=solver, boundary=_at_bounds(free, x, bounds, SUP_BOUNDARY))
    fit.samples = _bootstrap(len(runs), bootstrap, seed, lambda i: len({(runs[j].N, runs[j].D) for j in i}) >= 2,
                             lambda i: _least_squares(residual_for(i), [x] + starts, bounds, keep=2, polish=False)[0],
                             lambda xb: _sup_unpack(xb, free, fixed), progress, "supervised bootstrap")
    if held_out:
        fit.held_out = _held_out(runs, lambda rest: fit_supervised(rest, 0, seed, False, starts_kept=3),
                                 lambda f, r: float(supervised_loss(f.params, r.N, r.D)),
                                 lambda f: set(f.fixed) == set(fixed))
    return fit


def _bootstrap(n: int, times: int, seed: int, usable, solve, unpack, progress, what: str) -> list[dict]:
    """`times` refits on runs resampled with replacement (a resample `usable` rejects is skipped)."""
    rng = np.random.default_rng(seed)
    samples = []
    for b in range(times):
        i = rng.integers(0, n, n)
        if progress:
            progress.tick(what, b, times)
        if usable(i):
            samples.append(unpack(solve(i)))
    return samples


def _held_out(runs: list[FitPoint], refit, predict, identified=lambda f: True) -> dict | None:
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


# --- the distillation laws --------------------------------------------------------------------

KD_BOUNDS = {"mix": ([-3.0], [4.0]),  # m: any sign, past both "ignore" (0) and "copy the teacher" (1)
             "busbridge": ([-10.0, math.log(1e-4), math.log(1e-4), math.log(1e-3)],
                           [10.0, math.log(1e6), math.log(1e4), math.log(1e3)])}
KD_STARTS = {"mix": [np.array([m]) for m in (0.0, 0.3, 0.8)],
             "busbridge": [np.array([c0, math.log(c1), math.log(d1), math.log(f1)]) for c0, c1, d1, f1 in
                           itertools.product((-1.0, 0.0, 1.0), (0.5, 2.0), (0.5, 1.0, 2.0), (0.3, 1.0))]}


def kd_unpack(form: str, x) -> dict:
    if form == "mix":
        return {"m": float(x[0])}
    return {"c0": float(x[0]), "c1": math.exp(x[1]), "d1": math.exp(x[2]), "f1": math.exp(x[3])}


def kd_rows_too_few(form: str, rows: list[FitPoint]) -> str | None:
    """Why `rows` (one mix's runs) cannot identify `form`, or None."""
    teachers = len({r.teacher_loss for r in rows})
    if form == "mix":
        return None if rows else "no runs"
    if teachers < 3 or len(rows) < len(DISTILLATION) + 1:
        return (f"{len(rows)} runs from {teachers} teacher(s): Busbridge's 4 parameters need at least 3 teachers "
                "and 5 runs")
    return None


def fit_kd(form: str, rows: list[FitPoint], sup: Fit, bootstrap: int = 0, seed: int = 0,
           progress: Progress | None = None) -> Fit:
    """One mix's runs fitted in `form` on top of the supervised law `sup` (each bootstrap resample
    paired with a supervised law of the same bootstrap)."""
    N, D, L, T = (np.array([getattr(r, k) for r in rows], dtype=float) for k in ("N", "D", "loss", "teacher_loss"))
    bounds = tuple(np.array(b) for b in KD_BOUNDS[form])

    def residual_for(i, s=sup.params):
        def residual(x):
            with np.errstate(all="ignore"):
                pred = kd_loss(form, kd_unpack(form, x), s, T[i], N[i], D[i])
            return np.where(np.isfinite(pred) & (pred > 0), np.log(np.abs(pred) + 1e-300) - np.log(L[i]), 10.0)
        return residual

    everything = np.arange(len(rows))
    x, solver = _least_squares(residual_for(everything), KD_STARTS[form], bounds)
    solver["refit_drop"] = refit_drop(residual_for(everything), x, bounds)
    fit = Fit(kd_unpack(form, x), {}, len(rows), float(np.sqrt(np.mean(residual_for(everything)(x) ** 2))),
              form=form, solver=solver, boundary=_at_bounds(FORMS[form], x, bounds, {}))
    sups = sup.samples or [sup.params]
    count = iter(range(bootstrap))
    fit.samples = _bootstrap(len(rows), bootstrap, seed, lambda i: True,
                             lambda i: _least_squares(residual_for(i, sups[next(count) % len(sups)]),
                                                      [x] + KD_STARTS[form], bounds, keep=2, polish=False)[0],
                             lambda xb: kd_unpack(form, xb), progress, f"{form} bootstrap")
    if form == "busbridge":
        below = sum(1 for r in rows if r.loss < r.teacher_loss)
        if below:  # the form has L_S > L_T: a student that beat its teacher is out of its reach
            fit.fixed["form"] = (f"{below} of {len(rows)} runs beat their teacher (L_S < L_T), which Busbridge's form "
                                 "cannot express: its fit there is a floor, not a fit")
    return fit
