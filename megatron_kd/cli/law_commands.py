"""`mkd fit` (the distillation law from sweeps) and `mkd advise` (what to run for a budget)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from megatron_kd.console import Every, hms
from megatron_kd.errors import ConfigError


def add_law_parsers(sub) -> None:
    f = sub.add_parser("fit", help="fit the supervised and distillation scaling laws to sweeps' runs",
                       description="Fit L(N, D) = E + (A/N^alpha + B/D^beta)^gamma to the baselines, then per KD "
                                   "mix alpha a distillation law to the KD runs: L_B + m (L_T - L_B), or Busbridge "
                                   "et al.'s form at alpha = 1 where it cross-validates better (plain least squares "
                                   "on log-loss, many starts polished to convergence, bootstrap intervals over runs, "
                                   "each law scored by leave-one-cell-out error against ignoring the teacher); "
                                   "writes law.json for `mkd advise`.")
    f.add_argument("sources", nargs="+", metavar="SWEEP_DIR|TABLE.csv",
                   help="sweep `out` directories and/or results tables (`mkd report --help` lists the columns)")
    f.add_argument("--out", required=True, metavar="law.json")
    f.add_argument("--set", default=None, help="the validation set whose loss is fitted (default: the in-domain one)")
    f.add_argument("--params", choices=["flop", "non-embedding", "total"], default="flop",
                   help="what N counts (default flop: FLOP parameters, the report's currency, models/flops.py: "
                        "matmul weights + output layer + attention; from each run's FLOPs column, else its total "
                        "parameters); non-embedding and total are kept as options, and their FLOPs are not the "
                        "report's")
    f.add_argument("--seq-length", type=int, default=None, metavar="S",
                   help="the sequence length the runs were at, recorded in law.json (FLOP parameters count "
                        "attention at it); a sweep directory's recipes give it, a table does not")
    f.add_argument("--max-tokens", type=float, default=None, metavar="D",
                   help="leave out runs past D tokens (one epoch of the corpus: the law has no repetition term)")
    f.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap resamples for the intervals (default 200, at most 100000)")
    f.add_argument("--seed", type=int, default=0, help="the bootstrap's seed, in [0, 2^32) (default 0)")
    f.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file that is not an earlier law (default: refuse; an earlier "
                        "law is replaced, an input never)")
    f.set_defaults(func=cmd_fit)

    a = sub.add_parser("advise", help="given a fitted law and a compute budget: distil or not, and how",
                       description="Predict the student's loss of each option at a compute budget (per student: "
                                   "6 N_S D_S + 2 N_T D_S + 6 N_T D_T / K, N in FLOP parameters: the report's "
                                   "currency, models/flops.py) with the law's bootstrap interval "
                                   "widened by its cross-validated error: supervised, an existing teacher, or a "
                                   "teacher to train; print the best. A KD mix whose law does not beat ignoring "
                                   "the teacher is not priced: the sweep's measured gains are shown instead.")
    a.add_argument("law", help="law.json from `mkd fit`")
    a.add_argument("--flops", type=float, default=None, help="the compute budget per student, in FLOPs")
    a.add_argument("--gpu-hours", type=float, default=None, help="the budget in GPU-hours (with --throughput)")
    a.add_argument("--throughput", type=float, default=None, metavar="FLOP/S",
                   help="sustained FLOP/s per GPU, e.g. 4e14 for an H100 at 40 %% MFU in bf16")
    a.add_argument("--student", action="append", type=float, metavar="N",
                   help="student size(s) in the law's parameters, by default FLOP parameters (`mkd info RECIPE` prints "
                        "them) (repeatable; default: a grid over the fitted sizes)")
    a.add_argument("--teacher", nargs=2, type=float, metavar=("N_T", "LOSS"), default=None,
                   help="an existing teacher: its parameters as the law counts them (by default FLOP parameters: "
                        "a report row's teacher_pass_flops / (2 student_tokens)) and its validation loss on the "
                        "law's set")
    a.add_argument("--students", type=int, default=1, metavar="K",
                   help="students the teacher will serve (its training is shared among them; default 1)")
    a.add_argument("--extrapolate", action="store_true", help="allow options outside the fitted ranges")
    a.add_argument("--student-recipe", action="append", metavar="MODEL",
                   help="candidate student model recipe(s) (repeatable): their sizes, counted as the law counts "
                        "them, replace --student; needed by --write-recipes")
    a.add_argument("--teacher-recipe", action="append", metavar="MODEL",
                   help="candidate model recipe(s) for a teacher to train (repeatable; default: a grid of sizes)")
    a.add_argument("--teacher-checkpoint", default=None, metavar="PATH",
                   help="the existing teacher's checkpoint (with --teacher), named in the KD recipe written")
    a.add_argument("--write-recipes", default=None, metavar="DIR",
                   help="write the recommendation's recipes (student.yaml, or teacher.yaml and kd.yaml) to DIR")
    a.add_argument("--base", default=None, metavar="RECIPE",
                   help="with --write-recipes: the training recipe they start from (e.g. kd/_cpu_base)")
    a.add_argument("--overwrite", action="store_true",
                   help="with --write-recipes: replace recipes an earlier `mkd advise --write-recipes` wrote in DIR "
                        "(default: refuse; files it did not write are never replaced)")
    a.set_defaults(func=cmd_advise)


def cmd_fit(args) -> int:
    from megatron_kd.study.law import MAX_TOKENS, checked_number
    from megatron_kd.study.law_io import check_out, fit_law, rows_of, runs_of, seq_length_of, summary, write_law

    checked_number(args.bootstrap, "--bootstrap", "give a count of resamples, e.g. --bootstrap 200", 0, 100_000)
    checked_number(args.seed, "--seed", "give a seed in [0, 2^32), e.g. --seed 0", 0, 2**32 - 1)
    if args.max_tokens is not None:
        checked_number(args.max_tokens, "--max-tokens", "give the corpus's tokens, e.g. --max-tokens 1e9", 0,
                       MAX_TOKENS, low_open=True)
    out = check_out(args.out, args.sources, args.overwrite)
    rows = rows_of(args.sources)
    sets = sorted({s for r in rows for s in r.val})
    valid_set = args.set or next((s for s in ("indomain", "heldout", "mock") if s in sets), sets[0] if sets else None)
    if valid_set not in sets:
        raise ConfigError(f"no run has a loss on validation set {valid_set!r}; the sets are {', '.join(sets)}")
    if args.seq_length is not None:
        checked_number(args.seq_length, "--seq-length", "give the runs' sequence length, e.g. --seq-length 128", 0,
                       1e9, low_open=True)
    runs, notes = runs_of(rows, valid_set, args.params, args.max_tokens)
    seq, seq_notes = seq_length_of(rows, args.seq_length)
    console = FitConsole(runs, args.bootstrap)
    with console.following():
        law = fit_law(runs, args.bootstrap, args.seed, args.params, valid_set, say=console.say, seq_length=seq)
    console.finished(law)
    notes += seq_notes if args.params == "flop" else []
    for line in notes + summary(law):
        print(line)
    write_law(law, out)
    print(f"law written to {out}; next: mkd advise {out} --flops BUDGET")
    return 0


class FitConsole:
    """`mkd fit`'s progress lines: its plan (the stages), each stage as the fit reports it
    (study/law.py's Progress: each stage as it begins, then a bootstrap's, the leave-one-cell-out
    refits' or a form's cross-validation folds' count, every 10 s at most), a line every
    PROGRESS_EVERY_S while it reports nothing (one long solve), and the stages' results at the end."""

    def __init__(self, runs: list, bootstrap: int, every: Every | None = None, write=None):
        self.runs, self.bootstrap = runs, bootstrap
        self.every = every or Every()
        self.write = write or _write_line
        self.last = "the supervised law"
        self.lock = threading.Lock()

    def plan(self) -> list[str]:
        kd = [r for r in self.runs if r.teacher_loss is not None]
        sup = len(self.runs) - len(kd)
        cells = len({(r.N, r.D) for r in self.runs})
        alphas = sorted({r.alpha for r in kd})
        boot = f", {self.bootstrap} bootstrap resamples each" if self.bootstrap else ""
        lines = [f"fit: 1. the supervised law on {sup} baselines{boot}",
                 f"fit: 2. leave-one-cell-out refits of the supervised law ({cells} cells)"]
        for k, a in enumerate(alphas):
            n = sum(r.alpha == a for r in kd)
            forms = "mix, busbridge" if a == 1.0 else "mix"  # study/law_cv.py's candidates
            lines.append(f"fit: {3 + k}. the distillation law at alpha {a:g} ({n} run{'s' * (n != 1)}): each form "
                         f"({forms}) cross-validated over the cells, the best fitted")
        return lines

    def say(self, line: str) -> None:
        """A count from the fit (`supervised bootstrap 120/200`), with the time so far."""
        with self.lock:
            self._emit(f"fit: {line} ({hms(self.every.elapsed())} elapsed)")
            self.last = line

    def _emit(self, line: str) -> None:
        self.every.last = self.every.clock()  # a line said: the quiet timer restarts
        self.write(line)

    def beat(self) -> None:
        """The line while the fit reports nothing (called every few seconds)."""
        with self.lock:
            if self.every.due():
                self.write(f"fit: still fitting, last at {self.last} ({hms(self.every.elapsed())} elapsed)")

    def following(self):
        for line in self.plan():
            self.write(line)
        return _Beating(self)

    def finished(self, law: dict) -> None:
        done = [f"{float(a):g} ({f['form'] if isinstance(f, dict) and 'form' in f else 'not fitted'})"
                for a, f in law.get("distillation", {}).items()]
        self.write(f"fit: done in {hms(self.every.elapsed())}: the supervised law"
                   + (f"; distillation laws at alpha {', '.join(done)}" if done else ""))


class _Beating:
    """A thread calling FitConsole.beat every second while the fit runs."""

    def __init__(self, console: FitConsole):
        self.console, self.stop = console, threading.Event()
        self.thread = threading.Thread(target=self._loop, name="fit-progress", daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(1.0):
            self.console.beat()

    def __enter__(self):
        self.thread.start()
        return self.console

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _write_line(line: str) -> None:
    sys.stdout.write(line + "\n")  # one write: the progress thread and the fit print side by side
    sys.stdout.flush()


def _budget(args) -> float:
    """The budget per student in FLOPs, from --flops or --gpu-hours x --throughput, each finite."""
    from megatron_kd.study.law import MAX_FLOPS, checked_number

    if (args.flops is None) == (args.gpu_hours is None):
        raise ConfigError("give the budget as --flops F or as --gpu-hours H --throughput FLOP/S (one of them)")
    if args.flops is not None:
        return checked_number(args.flops, "--flops", "give the budget in FLOPs, e.g. --flops 1e18", 0, MAX_FLOPS,
                              low_open=True)
    if args.throughput is None:
        raise ConfigError("--gpu-hours needs --throughput FLOP/S > 0 (e.g. 4e14)")
    hours = checked_number(args.gpu_hours, "--gpu-hours", "give a positive number of GPU-hours", 0, None, True)
    rate = checked_number(args.throughput, "--throughput", "give FLOP/s per GPU, e.g. 4e14", 0, None, True)
    budget = hours * 3600 * rate
    if not budget <= MAX_FLOPS:  # an overflow to inf included
        raise ConfigError(f"--gpu-hours {hours:g} x --throughput {rate:g} is {budget:.3g} FLOPs, beyond any real "
                          f"budget (at most {MAX_FLOPS:g}); check both values")
    return budget


def _check_advise_flags(args) -> None:
    """Sizes, losses and counts finite and in range before the law sees them (a NaN size would be
    a NaN recommendation)."""
    from megatron_kd.study.law import MAX_LOSS, MAX_PARAMS, checked_number

    if args.teacher is not None:
        checked_number(args.teacher[0], "--teacher N_T", "give the teacher's parameters, e.g. 3e6", 0, MAX_PARAMS,
                       True)
        checked_number(args.teacher[1], "--teacher LOSS", "give the teacher's validation loss, e.g. 2.65", 0,
                       MAX_LOSS, True)
    for n in args.student or []:
        checked_number(n, "--student", "give student sizes in parameters, e.g. --student 1e6", 0, MAX_PARAMS, True)
    checked_number(args.students, "--students", "give how many students the teacher serves, e.g. --students 4",
                   1, 1e9)


def cmd_advise(args) -> int:
    from megatron_kd.study.advise import Law, advise, gains_lines, recommendation

    law = Law.load(args.law)
    budget = _budget(args)
    _check_advise_flags(args)
    import numpy as np

    from megatron_kd.study.advise_recipes import recipe_size, run_order_lines, seq_length_for, write_recipes

    if args.student and args.student_recipe:
        raise ConfigError("give student sizes as --student N or as --student-recipe MODEL, not both")
    if args.write_recipes and not (args.base and args.student_recipe):
        raise ConfigError("--write-recipes DIR needs --base RECIPE (the training recipe the runs start from) and "
                          "--student-recipe MODEL (the candidate students' architectures)")
    if args.overwrite and not args.write_recipes:
        raise ConfigError("--overwrite replaces recipes written by --write-recipes DIR; give DIR, or drop --overwrite")
    if args.teacher_checkpoint and not args.teacher:
        raise ConfigError("--teacher-checkpoint needs --teacher N_T LOSS (the existing teacher's size and loss)")
    params = law.parameters
    seq = seq_length_for(law.seq_length, args.base) if args.student_recipe or args.teacher_recipe else None
    students = {r: recipe_size(r, params, seq) for r in args.student_recipe or []}
    teachers = {r: recipe_size(r, params, seq) for r in args.teacher_recipe or []}
    sizes = list(students.values()) or args.student or list(np.geomspace(*law.ranges["N"], 9))
    options, notes = advise(law, budget, sizes, tuple(args.teacher) if args.teacher else None, args.students,
                            args.extrapolate, teacher_sizes=list(teachers.values()) or None)
    at = f" at sequence length {law.seq_length}" if law.seq_length else ""
    print(f"budget {budget:.3g} FLOPs per student, {args.students} student(s) per teacher; law {args.law} "
          f"(N: {params} parameters{at})")
    for o in options:
        print(f"  {o.describe()}")
    for n in notes:
        print(f"  ({n})")
    if law.unpriced:
        for line in gains_lines(law):
            print(f"  {line}")
    print(recommendation(options))
    if args.write_recipes:
        written = write_recipes(options[0], Path(args.write_recipes), args.base, students, teachers,
                                args.teacher_checkpoint, overwrite=args.overwrite)
        print("\n".join(run_order_lines(written)))
    return 0
