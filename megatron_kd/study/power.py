"""A sweep's power before it runs (`mkd power`): for each test the report will apply (claims.py),
the minimum detectable effect (MDE) at 80 % power after the report's corrections, computed from
the sweep's design alone (which points, which seeds) and a noise level.

The design is the report's paired model (paired.py): per student and set, loss = point + seed +
noise, least squares over every run of that student. A contrast c of the point means has
SE = sigma * sqrt(c' (X'X)^+ c) with df = n - rank(X), whatever the losses turn out to be, so the
SE is known before any run. A one-sided test at level a has 80 % power against an effect
MDE = (t_{1-a}(df) + t_{0.8}(df)) * SE (the usual normal-shift approximation with t quantiles;
the non-central t would add ~1-2 % at 20 degrees of freedom).

The corrections, as claims.read_claims applies them: each claim's primary p is Holm-adjusted over
the claims tested; here every claim gets Holm's first step, alpha/m (m: the claims the design can
test) — the worst case, since a claim tested second or later in Holm's order gets a larger share.
Within a claim, Bonferroni over its comparisons (claim 1: weak teacher x alpha x verdict set;
claim 2: two tests per teacher axis; claim 3: one per OOD test set). Claim 4 is an exact
permutation test of Spearman's rho over k teachers: its smallest p is 1/k!, however large the
effect. How many teachers will turn out weak (worse than the student in-domain) is unknown before
the teachers are evaluated: `weak` says how many to assume (1: the smallest family, so the
optimistic MDE).

A claim registered in the sweep's `primary:` block (primary.py) is one test: its contrast's SE
from the design (the mean over its points: weights 1/n on each, -1 on the baseline), at Holm's
first step with no Bonferroni within the claim (claim 2's registered axis keeps its two readings,
reverses and saturates). A registered `teachers: weak` is priced for the first `weak` real
teachers the sweep lists (all of them by default); in a balanced design (every teacher at every
α and seed) which ones does not change the SE, only how many.

Noise per comparison family, as the report reads it (paired.NoiseFamilies): every claim compares
real teachers at fixed α, so its contrasts are estimated from the fixed-α family's own fit (its
points and the baselines), with that family's residual degrees of freedom, and `noise` is that
family's sd (power_report.noise_from reads it so from a prior sweep). Scheduled-α points, controls
and frontier baselines have their own noise and do not lend the claims degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import t as t_dist

from megatron_kd.errors import ConfigError, MKDError
from megatron_kd.study.analysis import split_sets, test_sets
from megatron_kd.study.auto_test import MARGIN_FLOOR as AUTO_MARGIN_FLOOR
from megatron_kd.study.auto_test import ONE_SIDED as AUTO_ONE_SIDED
from megatron_kd.study.primary import describe_alphas
from megatron_kd.study.stats import AUTO_FAMILY, is_auto
from megatron_kd.study.sweep_recipes import resolve_point

POWER = 0.8
LEVEL = 0.95
EQUIVALENCE = 0.01  # claim 2's margin (analysis.EQUIVALENCE)
MIN_BOOTSTRAP_SEEDS = 5  # a bootstrap over fewer seeds has too few distinct resamples to be an interval
FIXED_ALPHA = "fixed α"  # analysis.comparison_family's name of the claims' family
EXACT_PERMUTATION_MAX = 8  # claims._permutation_rhos enumerates every order up to 8 teachers
SAMPLED_PERMUTATIONS = 5000


@dataclass
class Noise:
    """The residual sd of one run's loss: in-domain, out-of-distribution, and of a run's
    (OOD - in-domain) difference (claim 3's fit). `diff` unknown: the two taken as independent,
    sqrt(in_domain^2 + ood^2) (positively correlated sets make the true one smaller)."""

    in_domain: float
    ood: float | None = None
    diff: float | None = None
    source: str = "--sigma"

    def __post_init__(self):
        for name in ("in_domain", "ood", "diff"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"the noise level ({name}) must be a positive number, got {v}")
        self.ood = self.ood if self.ood is not None else self.in_domain
        self.diff = self.diff if self.diff is not None else math.hypot(self.in_domain, self.ood)


@dataclass
class StudentDesign:
    """One student's runs as the paired model sees them: {point key: its seeds}."""

    student: str
    baseline: str
    seeds_of: dict = field(default_factory=dict)
    kd: list = field(default_factory=list)  # fixed-α KD points: {key, teacher, alpha, control, model, tokens}
    family_of: dict = field(default_factory=dict)  # key -> its comparison family (None: the baseline, shared)
    auto: list = field(default_factory=list)  # kd.auto points: {key, teacher}

    def fixed_alpha(self) -> StudentDesign:
        """The design of the fixed-α family's own fit: its points and the shared baseline."""
        keep = {k: v for k, v in self.seeds_of.items() if self.family_of.get(k) in (None, FIXED_ALPHA)}
        return StudentDesign(self.student, self.baseline, keep, self.kd, self.family_of)


def designs_of(points) -> dict:
    """{student: StudentDesign} from sweep.expand's points (a point's key: its name without the
    seed tag, as the report pools a point's seeds)."""
    out: dict = {}
    for p in points:
        meta = p.meta
        seed = meta.get("seed")
        key = p.name.removesuffix(f"__seed{seed}") if seed is not None else p.name
        d = out.setdefault(meta["student"], StudentDesign(meta["student"], f"{meta['student']}__baseline"))
        d.seeds_of.setdefault(key, []).append(seed)
        d.family_of[key] = _family(p, key == d.baseline)
        if p.teacher is not None and meta.get("alpha") is not None and len(d.seeds_of[key]) == 1:
            d.kd.append({"key": key, "teacher": meta["teacher"], "alpha": float(meta["alpha"]),
                         "control": bool(p.teacher.get("unigram")), "model": meta.get("teacher_model"),
                         "tokens": meta.get("teacher_tokens")})
        if p.teacher is not None and is_auto(meta) and not p.teacher.get("unigram") and len(d.seeds_of[key]) == 1:
            d.auto.append({"key": key, "teacher": meta["teacher"]})
    return {s: d for s, d in out.items() if d.baseline in d.seeds_of}


def _family(point, is_baseline: bool) -> str | None:
    """The point's comparison family, named as analysis.comparison_family names a run's."""
    if is_baseline:
        return None
    if point.teacher is None:
        return "frontier baselines"
    if point.teacher.get("unigram"):
        return "controls"
    if is_auto(point.meta):
        return AUTO_FAMILY
    return "scheduled α" if point.meta.get("alpha_schedule") else FIXED_ALPHA


class DesignMatrix:
    """The paired model's design X (point and seed indicators) of one student: contrast
    variances in units of sigma^2 and the residual degrees of freedom."""

    def __init__(self, design: StudentDesign):
        self.keys = list(design.seeds_of)
        seeds = sorted({s for ss in design.seeds_of.values() for s in ss}, key=repr)
        self.n_seeds = {k: len(v) for k, v in design.seeds_of.items()}
        self.baseline = design.baseline
        col = {s: len(self.keys) + j for j, s in enumerate(seeds)}
        rows = [(i, col[s]) for i, k in enumerate(self.keys) for s in design.seeds_of[k]]
        x = np.zeros((len(rows), len(self.keys) + len(seeds)))
        for r, (i, j) in enumerate(rows):
            x[r, i] = x[r, j] = 1.0
        self._xtx = x.T @ x
        self._pinv = np.linalg.pinv(self._xtx)
        self.df = len(rows) - int(np.linalg.matrix_rank(x))
        self._index = {k: i for i, k in enumerate(self.keys)}

    def se_factor(self, weights: dict) -> tuple[float | None, int]:
        """(SE / sigma, df) of sum_k w_k mu_k; None where not estimable. Without residual degrees
        of freedom the report's sigma is the baselines' seed spread (paired.PairedFit), with
        n_baseline - 1 df, and a contrast the seeds do not pair is a difference of means:
        sqrt(sum w^2 / n_k)."""
        c = np.zeros(len(self._xtx))
        for k, w in weights.items():
            c[self._index[k]] += w
        estimable = np.allclose(self._xtx @ (self._pinv @ c), c, atol=1e-8)  # in X's row space
        df = self.df
        if self.df == 0:
            n_base = self.n_seeds[self.baseline]
            if n_base < 2:
                return None, 0
            df = n_base - 1
            if not estimable:
                return math.sqrt(sum(w * w / self.n_seeds[k] for k, w in weights.items())), df
        if not estimable:
            return None, df
        return math.sqrt(max(0.0, float(c @ self._pinv @ c))), df

    def gain_factor(self, key) -> tuple[float | None, int]:
        return self.se_factor({self.baseline: 1.0, key: -1.0})


def mde(se: float | None, df: int, alpha: float, power: float = POWER) -> float | None:
    """The effect a one-sided t test at `alpha` detects with probability `power`."""
    if se is None or df < 1:
        return None
    return float((t_dist.ppf(1 - alpha, df) + t_dist.ppf(power, df)) * se)


def teacher_axes(kd: list) -> list[tuple[str, list[str]]]:
    """claims._axes before the teachers exist: one model at 2+ token budgets, or 2+ models at one
    budget (their sizes are taken as distinct; the report also needs their parameter counts)."""
    info = {p["teacher"]: (p["model"], p["tokens"]) for p in kd if not p["control"]}
    axes = []
    for model in sorted({m for m, _ in info.values() if m}):
        ts = sorted((t for t, (m, tok) in info.items() if m == model and tok), key=lambda t: info[t][1])
        if len({info[t][1] for t in ts}) >= 2:
            axes.append((f"{model}: tokens", ts))
    for tok in sorted({tok for _, tok in info.values() if tok}):
        ts = sorted(t for t, (m, tk) in info.items() if tk == tok and m)
        if len({info[t][0] for t in ts}) >= 2:
            axes.append((f"{tok:,} tokens: size", ts))
    return axes


def sets_of(spec: dict, points) -> list[str]:
    """The validation sets every run is scored on (the first point's resolved data.valid)."""
    try:
        sets = list(resolve_point(spec, points[0]).data.valid)
    except MKDError:
        sets = []
    return sets or ["indomain", "ood"]


@dataclass
class Context:
    """What every claim's power needs: the design, the noise per set and the corrections."""

    design: StudentDesign
    matrix: DesignMatrix
    noise: Noise
    id_set: str
    ood_sets: list  # the OOD sets verdicts read (dev twins left out)
    level: float
    holm_m: int  # the claims the design can test: Holm's first step is (1 - level) / holm_m

    def sigma(self, s: str) -> float:
        return self.noise.in_domain if s == self.id_set else self.noise.ood

    @property
    def real(self) -> list:
        return [p for p in self.design.kd if not p["control"]]


def _row(test: str, s: str, family: int, alpha: float, factor_df: tuple, sigma: float, **extra) -> dict:
    factor, df = factor_df
    se = None if factor is None else factor * sigma
    return {"test": test, "set": s, "comparisons": family, "alpha": alpha, "se": se, "df": df,
            "mde": mde(se, df, alpha), **extra}


def _worst(factors: list) -> tuple[float | None, int]:
    """The largest SE factor among comparisons (the family's weakest member sets its MDE)."""
    ok = [f for f in factors if f[0] is not None]
    return max(ok, key=lambda f: f[0]) if ok else (None, 0)


def point_gain_rows(c: Context) -> list[dict]:
    """The report's per-point verdict (helps / hurts): a 95 % two-sided interval, uncorrected."""
    alpha = (1 - c.level) / 2
    factor = _worst([c.matrix.gain_factor(p["key"]) for p in c.real])  # a control's gain is read in its own family
    return [_row("per-point gain (uncorrected)", s, 1, alpha, factor, c.sigma(s)) for s in [c.id_set, *c.ood_sets]]


def claim1_rows(c: Context, weak: int) -> tuple[list[dict], list[str]]:
    alphas = sorted({p["alpha"] for p in c.real})
    sets = [c.id_set, *c.ood_sets]
    family = weak * len(alphas) * len(sets)
    if not c.real or family == 0:
        return [], []
    alpha = (1 - c.level) / c.holm_m / family
    factor = _worst([c.matrix.gain_factor(p["key"]) for p in c.real])
    rows = [_row("claim 1: a weak teacher's gain", s, family, alpha, factor, c.sigma(s),
                 note=f"{weak} weak teacher(s) assumed x {len(alphas)} α x {len(sets)} set(s)") for s in sets]
    warn = [f"claim 1 rests on one comparison ({weak} weak teacher, one α, one set)"] if family == 1 else []
    return rows, warn


def claim2_rows(c: Context, equivalence: float) -> tuple[list[dict], list[str]]:
    axes = teacher_axes(c.design.kd)
    if not axes:
        return [], []
    return _last_step_rows(c, axes, equivalence, "claim 2: last step reverses", f"{len(axes)} teacher axis/axes")


def _last_step_rows(c: Context, axes: list, equivalence: float, test: str, note: str,
                    registered: bool = False) -> tuple[list[dict], list[str]]:
    """The last step of each axis (reverses; saturates: the equivalence margin it reaches),
    Bonferroni over two tests per axis. `registered`: one axis chosen in advance (one step by
    design, not a design that leaves one)."""
    family = 2 * len(axes)  # reverses and saturates per axis, Bonferroni over the axes
    alpha = (1 - c.level) / c.holm_m / family
    points_of: dict = {}
    for p in c.real:
        points_of.setdefault(p["teacher"], []).append(p["key"])
    steps = [c.matrix.se_factor({a: 1.0, b: -1.0}) for _, ts in axes
             for a in points_of.get(ts[-2], []) for b in points_of.get(ts[-1], [])]  # the last step at any α pair
    factor = _worst(steps)
    row = _row(test, c.id_set, family, alpha, factor, c.sigma(c.id_set), note=note)
    se, df = row["se"], row["df"]
    # equivalence (two one-sided tests at alpha each) shown 80 % of the time when the true step
    # is 0 needs a margin of (t_{1-alpha} + t_{1-(1-power)/2}) SE
    reach = None if se is None or df < 1 else float((t_dist.ppf(1 - alpha, df) + t_dist.ppf(1 - (1 - POWER) / 2, df))
                                                    * se)
    sat = {**row, "test": test.replace("last step reverses", "saturates (equivalence)"), "mde": reach,
           "note": f"smallest margin with 80 % power; the report's is ±{equivalence:g}"}
    warn = []
    if reach is not None and reach > equivalence:
        warn.append(f"claim 2 cannot show saturation: equivalence within ±{equivalence:g} needs a margin of "
                    f"{reach:.3f} at this noise")
    if len(axes) == 1 and len(axes[0][1]) == 2 and not registered:
        warn.append(f"claim 2 rests on one comparison family of one member (the axis {axes[0][0]}: one step)")
    return [row, sat], warn


def claim3_rows(c: Context) -> tuple[list[dict], list[str]]:
    if not c.ood_sets or not c.real:
        return [], []
    family = len(c.ood_sets)
    alpha = (1 - c.level) / c.holm_m / family
    keys = [p["key"] for p in c.real]
    factor = c.matrix.se_factor({c.design.baseline: 1.0, **{k: -1.0 / len(keys) for k in keys}})
    rows = [_row("claim 3: mean (OOD − in-domain) gain", f"{s} − {c.id_set}", family, alpha, factor,
                 c.noise.diff, note=f"mean over {len(keys)} KD points") for s in c.ood_sets]
    warn = [f"claim 3 rests on one comparison (one OOD test set, {c.ood_sets[0]})"] if family == 1 else []
    return rows, warn


def teacher_order(c: Context) -> list[str]:
    """The real teachers in the sweep's order (grid.teacher, then teacher_grid)."""
    return list(dict.fromkeys(p["teacher"] for p in c.real))


def claim1_registered_rows(c: Context, entry: dict, weak: int | None) -> tuple[list[dict], list[str]]:
    """The registered mean gain over teachers x α on one set: one test, Holm's first step. For
    `teachers: weak` (decided when the teachers are scored), the first `weak` real teachers as the
    sweep lists them (all by default; in a balanced design any `weak` of them give the same SE)."""
    order = teacher_order(c)
    warn = []
    if entry["teachers"] == "weak":
        k = len(order) if weak is None else min(weak, len(order))
        chosen = order[:k]
        who = f"{k} weak teacher(s) assumed" + (f" (the first {k} listed)" if k < len(order) else " (every one listed)")
    else:
        chosen = list(entry["teachers"])
        who = f"teachers {', '.join(chosen)}"
        if weak is not None:
            warn.append("--weak-teachers is not used by claim 1: its registered contrast names its teachers")
    alphas = set(entry["alpha"])
    pts = [p for p in c.real if p["teacher"] in set(chosen) and p["alpha"] in alphas]
    if not pts:
        return [], warn + ["claim 1's registered contrast has no point to price (no weak teacher assumed)"]
    factor = c.matrix.se_factor({c.design.baseline: 1.0, **{p["key"]: -1.0 / len(pts) for p in pts}})
    s = entry["set"]
    note = f"registered: mean over {len(pts)} points, {who} x α ∈ {describe_alphas(alphas)}"
    return [_row("claim 1 (registered): mean gain", s, 1, (1 - c.level) / c.holm_m, factor, c.sigma(s),
                 note=note)], warn


def claim2_registered_rows(c: Context, entry: dict, equivalence: float) -> tuple[list[dict], list[str]]:
    """The registered axis: its last step (the last two teachers at any pair of their α), reverses
    and saturates (two tests, Bonferroni over them), Holm's first step."""
    ts = list(entry["axis"])
    axis = f"registered {' → '.join(ts)}"
    return _last_step_rows(c, [(axis, ts)], equivalence, "claim 2 (registered): last step reverses", "registered axis",
                           registered=True)


def claim3_registered_rows(c: Context, entry: dict) -> tuple[list[dict], list[str]]:
    keys = [p["key"] for p in c.real]
    if not keys:
        return [], []
    factor = c.matrix.se_factor({c.design.baseline: 1.0, **{k: -1.0 / len(keys) for k in keys}})
    return [_row("claim 3 (registered): mean (OOD − in-domain) gain", f"{entry['set']} − {c.id_set}", 1,
                 (1 - c.level) / c.holm_m, factor, c.noise.diff,
                 note=f"registered: mean over {len(keys)} KD points")], []


def claim4_rows(c: Context) -> tuple[list[dict], list[str]]:
    teachers = sorted({p["teacher"] for p in c.real})
    k = len(teachers)
    if k < 3:
        return [], [f"claim 4 cannot be tested: it needs three real teachers, the sweep has {k}"]
    alpha = (1 - c.level) / c.holm_m
    levels = len({p["alpha"] for p in c.real}) + 1  # the grid's α values, and α = 0 (no KD) competing
    smallest = smallest_spearman_p(k, levels)
    row = {"test": "claim 4: Spearman ρ (permutation)", "set": c.id_set, "comparisons": 1, "alpha": alpha,
           "se": None, "df": None, "mde": None, "smallest_p": smallest,
           "note": f"{k} teachers, {levels} possible best α (0 included): smallest p for the best order"}
    warn = []
    if smallest >= alpha:
        warn.append(f"claim 4 cannot hold: with {k} teachers and {levels} possible best α the smallest permutation "
                    f"p is {smallest:.3g}, not below the Holm level {alpha:.3g} even for a perfect order")
    top = max(p["alpha"] for p in c.real)
    if top < 1:
        warn.append(f"claim 4's best-α search is censored: the grid's largest α is {top:g} < 1, so a teacher "
                    "whose gain still grows there gets its maximum at the edge (ties at the edge carry no order)")
    n_seeds = c.matrix.n_seeds[c.design.baseline]
    if n_seeds < MIN_BOOTSTRAP_SEEDS:
        warn.append(f"claim 4's bootstrap interval over {n_seeds} seed(s) has {math.comb(2 * n_seeds - 1, n_seeds)} "
                    f"distinct resamples: not an interval (needs {MIN_BOOTSTRAP_SEEDS}+ seeds)")
    return [row], warn


def smallest_spearman_p(k: int, levels: int) -> float:
    """The smallest one-sided p the report's permutation test of Spearman's rho (claims.claim4)
    can give k teachers whose best α takes one of `levels` values. The best order is the
    monotone one, and only the orders that permute tied teachers among themselves reach its rho:
    p = prod(n_i!) / k! for group sizes n_i, smallest for the most even split (more teachers than
    levels force ties). Up to 8 teachers the test is exact; above, 5,000 sampled orders give
    1/5001 at best. (Tested against scipy.stats.permutation_test.)"""
    if k > EXACT_PERMUTATION_MAX:
        return 1 / (SAMPLED_PERMUTATIONS + 1)
    parts = min(k, levels)
    sizes = [k // parts + (i < k % parts) for i in range(parts)]
    return math.prod(math.factorial(n) for n in sizes) / math.factorial(k)


def auto_rows(c: Context, entry: dict | None) -> list[dict]:
    """The kd.auto test's per-teacher MDE (auto_test.py): a paired (auto − reference) difference over
    the auto point's seeds, SE σ·√(2/n), one-sided at its registered 0.05, and the margin it sets,
    max(floor, MDE): the registered `primary.auto` ({set, margin}), else the in-domain set and 0.01."""
    s = (entry or {}).get("set", c.id_set)
    floor = (entry or {}).get("margin", AUTO_MARGIN_FLOOR)
    tag = " (registered)" if entry else ""
    rows = []
    for p in c.design.auto:
        n = len(c.design.seeds_of[p["key"]])
        row = _row(f"kd.auto not worse than the grid{tag}: {p['teacher']}", s, 1, AUTO_ONE_SIDED,
                   (math.sqrt(2 / n), c.matrix.df), c.sigma(s))
        if row["mde"] is not None:
            row["note"] = f"margin max({floor:g}, MDE) = {max(floor, row['mde']):.3f}; {n} seeds"
        rows.append(row)
    return rows


def testable_claims(design: StudentDesign, ood_sets: list) -> int:
    """m of Holm's first step: the claims this design can test (claim 1 counted whenever a real
    teacher exists: whether one is weak is known only after the teachers' evaluation)."""
    real = [p for p in design.kd if not p["control"]]
    return max(1, sum([bool(real), bool(teacher_axes(design.kd)), bool(real and ood_sets),
                       len({p["teacher"] for p in real}) >= 3]))


def student_power(design: StudentDesign, noise: Noise, sets: list, level: float = LEVEL, weak: int | None = None,
                  equivalence: float = EQUIVALENCE, primary: dict | None = None, auto: dict | None = None) -> dict:
    """{student, df, holm_m, rows, warnings} for one student's design. `weak`: the weak teachers
    assumed (None: 1 for the unregistered claim 1, every listed one for a registered `weak`);
    `primary`: {claim: its registered entry} (primary.parse_primary): those claims are priced as
    their one registered test; `auto`: the registered `primary.auto` entry (the kd.auto points' test
    is priced per teacher whenever the design has them)."""
    id_set, ood = split_sets(sets)
    ood_sets, _ = test_sets(ood)
    matrix = DesignMatrix(design.fixed_alpha())
    if matrix.df == 0 and len(design.fixed_alpha().seeds_of) < len(design.seeds_of):
        matrix = DesignMatrix(design)  # the report pools the families when the fixed-α one has no df of its own
    c = Context(design, matrix, noise, id_set, ood_sets, level, testable_claims(design, ood_sets))
    rows, warnings = point_gain_rows(c), []
    if matrix.df == 0:
        warnings.append(f"{design.student}: no residual degrees of freedom (one seed per KD point): the report "
                        "reads the baselines' seed spread as each run's noise")
    reg = primary or {}
    parts = (claim1_registered_rows(c, reg[1], weak) if 1 in reg else claim1_rows(c, 1 if weak is None else weak),
             claim2_registered_rows(c, reg[2], equivalence) if 2 in reg else claim2_rows(c, equivalence),
             claim3_registered_rows(c, reg[3]) if 3 in reg else claim3_rows(c), claim4_rows(c))
    for part in parts:
        rows += part[0]
        warnings += part[1]
    rows += auto_rows(c, auto)
    return {"student": design.student, "df": matrix.df, "holm_m": c.holm_m, "id_set": id_set,
            "ood_sets": ood_sets, "rows": rows, "warnings": warnings}
