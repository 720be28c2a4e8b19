"""`mkd advise`: given a fitted law (law.json from `mkd fit`) and a compute budget, should one
distil, from which teacher, and how long should the student train?

Compute per student (FLOPs), as Busbridge et al. count it and in the report's currency
(models/flops.py: `training_flops`, `forward_flops`, `tokens_for_budget`; `charge` below):
    C = 6 N_S D_S  +  2 N_T D_S  +  6 N_T D_T / K
(the student's training, the teacher's forward over the student's tokens, and the teacher's own
training shared by the K students it serves; 0 for a teacher that already exists). N_S and N_T
are FLOP parameters (flops.flop_params: matmul weights + output layer + causal attention at the
law's sequence length), the law's N when law.json says `"parameters": "flop"` (the default): then
an option's FLOPs are the report's `student_flops + teacher_pass_flops` for the same run. For each
option the student's tokens are what the budget leaves; the options are the supervised run, an
existing teacher at each fitted alpha, and a teacher to train (its size on a grid over the
fitted sizes, the budget's share for it on a grid) at each fitted alpha. Every prediction comes
with the interval of the law's bootstrap; an option that needs the law outside what it was fitted
on (sizes, tokens, teacher losses) is left out, and a budget with no option inside is refused
unless `extrapolate`.

A distilled option is priced only from a law whose leave-one-cell-out error beats ignoring the
teacher (study/law_cv.py); for any other mix `mkd advise` says so in one line and shows the gains
the sweep measured instead. Every interval is the bootstrap's, widened by the law's
cross-validated rms log-error (a factor exp(±error)): the bootstrap alone sees only the noise of
the fitted runs, not how far the law misses a cell it did not see.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megatron_kd.errors import ConfigError
from megatron_kd.models.flops import forward_flops, tokens_for_budget, training_flops
from megatron_kd.study.law import (
    FORMAT,
    FORMS,
    GAIN_COLUMNS,
    MAX_FLOPS,
    MAX_LOSS,
    MAX_PARAMS,
    MAX_TOKENS,
    PARAMETERS,
    SUPERVISED,
    checked_number,
    kd_loss,
    supervised_loss,
)

SIGNED = ("c0", "m")  # parameters of either sign
TEACHER_SHARE = "teacher training (this student's share)"


@dataclass(frozen=True)
class Law:
    supervised: dict
    supervised_samples: list
    fixed: dict
    mixes: dict  # alpha -> {"form", "params", "samples", "cv"}: the laws that beat no effect
    ranges: dict  # N, D, teacher_loss: [low, high]
    parameters: str = "flop"  # what N counts: FLOP parameters (models/flops.py), or non-embedding / total
    unpriced: dict = field(default_factory=dict)  # alpha -> the one line saying why it is not priced
    gains: list = field(default_factory=list)  # the sweep's measured rows, GAIN_COLUMNS each
    supervised_cv: float = 0.0  # the supervised law's leave-one-cell-out rms log-error
    seq_length: int | None = None  # the runs' sequence length (FLOP parameters count attention at it)

    @classmethod
    def load(cls, path: str | Path) -> "Law":
        """The law in `path`, its schema checked where it is read: a hand-edited or damaged file
        is one line naming the key, not a traceback or a NaN recommendation."""
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ConfigError(f"{p} is not a law written by `mkd fit` ({str(exc)[:120]}); fit one with "
                              "`mkd fit SWEEP_DIR --out law.json`") from exc
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = f"format {str(d.get('format'))[:40]!r}" if isinstance(d, dict) else f"a JSON {type(d).__name__}"
            raise ConfigError(f"{p} is not a law written by `mkd fit` ({got}, not {FORMAT}); fit one with "
                              "`mkd fit SWEEP_DIR --out law.json`")
        return _law_from_json(d, _LawSchema(p))


class _LawSchema:
    """law.json's shape (study/law_io.fit_law writes it), checked key by key with one line each."""

    def __init__(self, path: Path):
        self.fix = f"the file was edited or damaged: re-run `mkd fit` to write {path} again"
        self.path = path

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: law key {key} {problem}; {self.fix}")

    def mapping(self, d: dict, key: str, name: str) -> dict:
        if name not in d:
            raise self.fail(key, "is missing")
        if not isinstance(d[name], dict):
            raise self.fail(key, f"is a {type(d[name]).__name__}, not a mapping")
        return d[name]

    def params(self, d, key: str, names: tuple, positive: tuple) -> dict:
        """A parameter set: every name present and finite, `positive` ones > 0, the others >= 0
        (c0 and m may have either sign)."""
        if not isinstance(d, dict):
            raise self.fail(key, f"is a {type(d).__name__}, not a mapping of parameters")
        out = {}
        for n in names:
            if n not in d:
                raise self.fail(f"{key}.{n}", "is missing")
            low = None if n in SIGNED else 0
            high = MAX_LOSS if n == "E" else None  # the irreducible loss is a loss (nats/token)
            out[n] = checked_number(d[n], f"{self.path}: law key {key}.{n}", self.fix, low, high, n in positive)
        return out

    def samples(self, d: dict, key: str, names: tuple, positive: tuple) -> list[dict]:
        raw = d.get("samples", [])
        if not isinstance(raw, list):
            raise self.fail(f"{key}.samples", f"is a {type(raw).__name__}, not a list of parameter sets")
        return [self.params(x, f"{key}.samples[{i}]", names, positive) for i, x in enumerate(raw)]

    def interval(self, ranges: dict, name: str, high: float) -> list[float] | None:
        v = ranges.get(name)
        if v is None:
            return None
        if not isinstance(v, list) or len(v) != 2:
            raise self.fail(f"ranges.{name}", "is not a [low, high] pair")
        lo, hi = (checked_number(x, f"{self.path}: law key ranges.{name}", self.fix, 0, high, True) for x in v)
        if lo > hi:
            raise self.fail(f"ranges.{name}", f"has low {lo:g} above high {hi:g}")
        return [lo, hi]


    def error(self, d: dict, key: str, name: str) -> float | None:
        """A cross-validated rms log-error: absent or null is None, else a finite number >= 0."""
        v = d.get(name)
        return None if v is None else checked_number(v, f"{self.path}: law key {key}.{name}", self.fix, 0, 10)

    def gains(self, d: dict) -> list:
        g = d.get("gains")
        if g is None:
            return []
        if not isinstance(g, dict) or g.get("columns") != list(GAIN_COLUMNS) or not isinstance(g.get("rows"), list):
            raise self.fail("gains", f"is not a table with columns {list(GAIN_COLUMNS)} and a list of rows")
        rows = []
        for i, row in enumerate(g["rows"]):
            if not isinstance(row, list) or len(row) != len(GAIN_COLUMNS):
                raise self.fail(f"gains.rows[{i}]", f"is not a row of {len(GAIN_COLUMNS)} numbers")
            rows.append([checked_number(x, f"{self.path}: law key gains.rows[{i}]", self.fix, 0, MAX_TOKENS)
                         for x in row])
        return rows


def _mix_from_json(schema: _LawSchema, key: str, m) -> dict:
    """One fitted mix: its form, parameters, samples and cross-validated errors."""
    if not isinstance(m, dict):
        raise schema.fail(key, f"is a {type(m).__name__}, not a fit or the reason for none")
    form = m.get("form")
    if form not in FORMS:
        raise schema.fail(f"{key}.form", f"is {str(form)[:40]!r}, not one of {', '.join(FORMS)}")
    positive = tuple(n for n in FORMS[form] if n not in SIGNED)
    cv = m.get("cv")
    if not isinstance(cv, dict):
        raise schema.fail(f"{key}.cv", "is missing (the leave-one-cell-out errors that decide whether it is priced)")
    return {"form": form, "params": schema.params(m.get("params"), f"{key}.params", FORMS[form], positive),
            "samples": schema.samples(m, key, FORMS[form], positive),
            "cv": schema.error(cv, f"{key}.cv", "law_rmse_log"),
            "no_effect": schema.error(cv, f"{key}.cv", "no_effect_rmse_log")}


def not_priced_line(alpha: float, mix: dict) -> str | None:
    """The one line that says why a mix's law prices nothing (None: it earns its place)."""
    law, none = mix["cv"], mix["no_effect"]
    if law is not None and none is not None and law < none:
        return None
    shown = lambda x: "not measured" if x is None else f"{100 * x:.2f} %"  # noqa: E731
    return (f"distillation at α={alpha:g} is not priced: its law's leave-one-cell-out error ({shown(law)}) does not "
            f"beat ignoring the teacher ({shown(none)}); the sweep's measured gains follow")


def _law_from_json(d: dict, schema: _LawSchema) -> Law:
    sup = schema.mapping(d, "supervised", "supervised")
    positive = ("E", "A", "B", "gamma")  # the fit's free parameters are exp(); alpha, beta are 0 when fixed
    params = schema.params(sup.get("params"), "supervised.params", SUPERVISED, positive)
    samples = schema.samples(sup, "supervised", SUPERVISED, positive)
    fixed = sup.get("fixed", {})
    if not isinstance(fixed, dict):
        raise schema.fail("supervised.fixed", "is not a mapping of parameter to reason")
    sup_cv = sup.get("cv") or {}
    if not isinstance(sup_cv, dict):
        raise schema.fail("supervised.cv", "is not a mapping of cross-validated errors")
    mixes, unpriced = {}, {}
    for a, m in schema.mapping(d, "distillation", "distillation").items():
        try:
            alpha = float(a)
        except ValueError:
            raise schema.fail(f"distillation.{a[:20]}", "is not a KD mix α") from None
        if not 0 <= alpha <= 1:
            raise schema.fail(f"distillation.{a[:20]}", "is a KD mix α outside [0, 1]")
        if isinstance(m, str):  # a mix no law could be fitted to: its reason, and the gains instead
            unpriced[alpha] = (f"distillation at α={alpha:g} is not priced: no law was fitted to it ({m[:160]}); "
                               "the sweep's measured gains follow")
            continue
        mix = _mix_from_json(schema, f"distillation.{a}", m)
        line = not_priced_line(alpha, mix)
        if line:
            unpriced[alpha] = line
        else:
            mixes[alpha] = mix
    ranges = schema.mapping(d, "ranges", "ranges")
    checked = {"N": schema.interval(ranges, "N", MAX_PARAMS), "D": schema.interval(ranges, "D", MAX_TOKENS),
               "teacher_loss": schema.interval(ranges, "teacher_loss", MAX_LOSS)}
    for name in ("N", "D") + (("teacher_loss",) if mixes else ()):
        if checked[name] is None:
            raise schema.fail(f"ranges.{name}", "is missing")
    parameters = d.get("parameters", "non-embedding")  # a law.json from before "flop" always wrote it
    if parameters not in PARAMETERS:
        raise schema.fail("parameters", f"is {str(parameters)[:40]!r}, not one of {', '.join(map(repr, PARAMETERS))}")
    seq = d.get("seq_length")
    if seq is not None:
        seq = checked_number(seq, f"{schema.path}: law key seq_length", schema.fix, 0, 1e9, low_open=True)
        if seq != int(seq):
            raise schema.fail("seq_length", f"is {seq:g}, not a whole number of tokens")
        seq = int(seq)
    return Law(params, samples, fixed, mixes, checked, parameters, unpriced, schema.gains(d),
               schema.error(sup_cv, "supervised.cv", "law_rmse_log") or 0.0, seq)


def gains_lines(law: Law) -> list[str]:
    """The sweep's measured gains (baseline mean minus the KD run's loss; + is distilling helped),
    one line per student cell and mix."""
    cells: dict = {}
    for N, D, alpha, t_loss, loss, base in law.gains:
        cells.setdefault((N, D, alpha), []).append((base - loss, t_loss))
    lines = []
    for (N, D, alpha), got in sorted(cells.items()):
        shown = ", ".join(f"{g:+.3f} (teacher {t:.3f})" for g, t in sorted(got, reverse=True))
        lines.append(f"measured at N={N:.3g}, D={D:.3g}, α={alpha:g}: {shown}")
    return lines


@dataclass
class Option:
    kind: str  # supervised | existing teacher | train a teacher
    alpha: float | None
    N_S: float
    D_S: float
    N_T: float | None
    D_T: float | None
    loss: float
    interval: tuple | None
    flops: dict

    def describe(self) -> str:
        if self.kind == "supervised":
            what = "supervised"
        elif self.kind == "existing teacher":
            what = f"distil at α={self.alpha:g} from the existing teacher ({self.N_T:.3g} parameters)"
        else:
            what = (f"train a teacher of {self.N_T:.3g} parameters for {self.D_T:.3g} tokens, distil at "
                    f"α={self.alpha:g}")
        iv = f" [{self.interval[0]:.4f}, {self.interval[1]:.4f}]" if self.interval else ""
        return f"{what}; student {self.N_S:.3g} parameters for {self.D_S:.3g} tokens: loss {self.loss:.4f}{iv}"


RANGE_SLACK = 1e-3  # a value given rounded (a teacher loss typed as 3.9549) is not an extrapolation


def _inside(law: Law, key: str, x: float) -> bool:
    lo, hi = law.ranges[key]
    return lo * (1 - RANGE_SLACK) <= x <= hi * (1 + RANGE_SLACK)


def _interval(values: list[float], error: float = 0.0) -> tuple | None:
    """The bootstrap's 95 % interval widened by the law's cross-validated rms log-error."""
    v = [x for x in values if math.isfinite(x)]
    if len(v) < 10:
        return None
    lo, hi = np.quantile(v, [0.025, 0.975])
    return float(lo) * math.exp(-error), float(hi) * math.exp(error)


def _supervised(law: Law, N, D, samples: bool = True):
    with np.errstate(all="ignore"):  # an overflow is a non-finite prediction, left out by advise()
        loss = float(supervised_loss(law.supervised, N, D))
        band = [float(supervised_loss(s, N, D)) for s in law.supervised_samples] if samples else []
    return loss, _interval(band, law.supervised_cv)


def _distilled(law: Law, alpha: float, L_T, N, D, teacher_sup: tuple | None = None):
    """Loss and interval; `teacher_sup` = (N_T, D_T): the teacher's loss from the supervised law
    (of the same bootstrap sample), else the given L_T."""
    mix = law.mixes[alpha]

    def one(sup, dist):
        lt = supervised_loss(sup, *teacher_sup) if teacher_sup else L_T
        return float(kd_loss(mix["form"], dist, sup, lt, N, D))

    with np.errstate(all="ignore"):  # an overflow is a non-finite prediction, left out by advise()
        loss = one(law.supervised, mix["params"])
        sups, dists = law.supervised_samples, mix.get("samples", [])
        band = [one(sups[i % len(sups)], d) for i, d in enumerate(dists)] if sups and dists else []
    return loss, _interval(band, mix["cv"] or 0.0)


def charge(N_S: float, D_S: float, N_T: float | None = None, D_T: float | None = None,
           students: int = 1) -> dict:
    """An option's FLOPs per student by part, in models/flops.py's currency: the student's training
    on D_S tokens, an (existing or trained) teacher's forward over them, and a trained teacher's own
    training on D_T tokens shared by `students`. N_S and N_T are FLOP parameters."""
    flops = {"student": training_flops(N_S, D_S)}
    if N_T is not None:
        flops["teacher forward"] = forward_flops(N_T, D_S)
    if N_T is not None and D_T is not None:
        flops[TEACHER_SHARE] = training_flops(N_T, D_T) / students
    return flops


def advise(law: Law, budget: float, student_sizes: list[float], teacher: tuple | None = None,
           students: int = 1, extrapolate: bool = False, teacher_sizes: list[float] | None = None,
           shares: int = 19) -> tuple[list[Option], list[str]]:
    """(options, best first; notes). Sizes (`student_sizes`, `teacher_sizes`, N_T of `teacher` =
    (N_T, L_T), an existing teacher) are FLOP parameters where the law's are (`law.parameters`)."""
    checked_number(budget, "the budget", "give FLOPs > 0, e.g. --flops 1e18", 0, MAX_FLOPS, low_open=True)
    checked_number(students, "--students", "give how many students the teacher serves, e.g. 4", 1, 1e9)
    for n in list(student_sizes) + list(teacher_sizes or []):
        checked_number(n, "a model size", "give sizes in parameters > 0", 0, MAX_PARAMS, low_open=True)
    if teacher is not None:
        checked_number(teacher[0], "the teacher's size", "give parameters > 0", 0, MAX_PARAMS, low_open=True)
        checked_number(teacher[1], "the teacher's loss", f"give its validation loss in (0, {MAX_LOSS:g}] nats", 0,
                       MAX_LOSS, low_open=True)
    ok = (lambda key, x: True) if extrapolate else (lambda key, x: _inside(law, key, x))
    options, left_out = [], 0
    for N_S in student_sizes:
        if not ok("N", N_S):
            left_out += 1
            continue
        D = tokens_for_budget(budget, N_S)
        if ok("D", D):
            loss, iv = _supervised(law, N_S, D)
            options.append(Option("supervised", None, N_S, D, None, None, loss, iv, charge(N_S, D)))
        else:
            left_out += 1
        for alpha in law.mixes:
            if teacher is not None:
                N_T, L_T = teacher
                D_S = tokens_for_budget(budget, N_S, N_T)
                if ok("D", D_S) and ok("teacher_loss", L_T):
                    loss, iv = _distilled(law, alpha, L_T, N_S, D_S)
                    options.append(Option("existing teacher", alpha, N_S, D_S, N_T, None, loss, iv,
                                          charge(N_S, D_S, N_T)))
                else:
                    left_out += 1
            for N_T in teacher_sizes or _grid(*law.ranges["N"], 9):
                for f in np.linspace(0.05, 0.95, shares):
                    D_T = tokens_for_budget(f * budget * students, N_T)  # its training, shared by the K
                    D_S = tokens_for_budget((1 - f) * budget, N_S, N_T)
                    with np.errstate(all="ignore"):
                        L_T = float(supervised_loss(law.supervised, N_T, D_T))
                    if not (ok("N", N_T) and ok("D", D_T) and ok("D", D_S) and ok("teacher_loss", L_T)):
                        left_out += 1
                        continue
                    loss, iv = _distilled(law, alpha, None, N_S, D_S, teacher_sup=(N_T, D_T))
                    options.append(Option("train a teacher", alpha, N_S, D_S, N_T, D_T, loss, iv,
                                          charge(N_S, D_S, N_T, D_T, students)))
    if not options:
        lo, hi = law.ranges["D"]
        raise ConfigError(f"a budget of {budget:.3g} FLOPs puts every option outside the fitted law (student "
                          f"sizes {law.ranges['N'][0]:.3g}-{law.ranges['N'][1]:.3g}, tokens {lo:.3g}-{hi:.3g}); "
                          "choose a budget and sizes inside, or pass --extrapolate")
    notes = [f"{left_out} candidate(s) left out: outside the fitted ranges (--extrapolate keeps them)"] \
        if left_out else []
    notes += list(law.unpriced.values())
    if law.parameters != "flop":
        notes.append(f"the law counts N as {law.parameters} parameters, so these FLOPs are not the report's "
                     "(models/flops.py); refit with `mkd fit` (its default --params flop) to price in one currency")
    if teacher is not None and law.mixes and not ok("teacher_loss", teacher[1]):  # its every option is gone: say why
        lo, hi = law.ranges["teacher_loss"]
        notes.insert(0, f"the existing teacher's loss {teacher[1]:.4f} is outside the teacher losses the law "
                        f"was fitted on ({lo:.4f}-{hi:.4f}): no option distils from it (--extrapolate keeps them, "
                        "unvalidated)")
    finite = [o for o in options if math.isfinite(o.loss) and 0 < o.loss <= MAX_LOSS]
    if len(finite) < len(options):  # the law overflows there (a huge exponent): no prediction, not NaN
        notes.append(f"{len(options) - len(finite)} option(s) left out: the law predicts no finite loss "
                     f"(in (0, {MAX_LOSS:g}] nats) there")
    if not finite:
        raise ConfigError(f"the law predicts no finite loss (in (0, {MAX_LOSS:g}] nats) for any option at this budget; "
                          "choose a budget and sizes inside the fitted ranges")
    options = sorted(finite, key=lambda o: o.loss)
    return _best_per_kind(options), notes


def _grid(lo: float, hi: float, n: int) -> list[float]:
    return list(np.geomspace(lo, hi, n)) if hi > lo else [lo]


def _best_per_kind(options: list[Option]) -> list[Option]:
    """The best option of each kind and alpha (the full grid is noise to a reader)."""
    seen, out = set(), []
    for o in options:
        key = (o.kind, o.alpha)
        if key not in seen:
            seen.add(key)
            out.append(o)
    return out


def recommendation(options: list[Option]) -> str:
    best = options[0]
    sup = next((o for o in options if o.kind == "supervised"), None)
    verdict = "supervised wins" if best.kind == "supervised" else "distil"
    line = f"recommendation ({verdict}): {best.describe()}"
    if sup is not None and best is not sup:
        line += f"; {sup.loss - best.loss:.4f} nats below supervised at the same compute"
        if best.interval and sup.interval and best.interval[1] >= sup.interval[0]:
            line += " (the intervals overlap: not a clear win)"
    return line
