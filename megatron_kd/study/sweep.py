"""Sweeps: a grid over teacher × student × α × temperature × KD kind/top-k (any subset), plus
the no-KD baseline of each student, expanded into one resolved recipe per point.

Sweep YAML:

    name: cpu-mini
    base: kd/_cpu_base              # the training recipe every point starts from
    out: runs/sweeps/cpu-mini       # sweep directory (recipes/, runs/, results)
    overrides: [train.steps=200]    # applied to every point
    seeds: [1234]                   # several seeds: one run per seed (noise bands)
    baseline: true                  # the no-KD run of each student
    baseline_seeds: [1235]          # extra baseline seeds only (a cheaper noise band)
    baseline_steps: [100, 400]      # baselines at other lengths, each seed: the supervised
                                    # frontier `mkd report` compares KD's total compute with
    auto_ceiling: 1.0               # kd.alpha of grid.alpha's `auto` points (default 1.0)
    grid:
      student: [models/cpu-small]               # model recipes
      steps: [100, 200, 400]                    # student budgets: each student at each length, its
                                                # own schedule (the student is then `small-200steps`)
      teacher:                                  # explicit teachers ...
        - {name: tiny-300, checkpoint: runs/teachers/cpu-tiny/checkpoints/tokens_614400,
           model: models/cpu-tiny, tokens: 614400}
      teacher_grid:                             # ... and/or a models x token budgets product
        models: {0.5b: models/llama3-0.5b}
        tokens: [5e9, 50e9]
        checkpoint: runs/teachers/{model}/checkpoints/tokens_{tokens}
      alpha: [0.2, 0.5, 1.0, auto]              # auto: one kd.auto point per teacher (α set by
                                                # the run; kd.alpha = the sweep's auto_ceiling, 1.0)
      alpha_schedule:                           # extra points per teacher: α over training
        - {alpha: 1.0, kind: cosine, final: 0.0}  # kd.alpha + kd.alpha_schedule.*
      temperature: [1.0]
      kind: [forward_kl]
      top_k: [null]
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from megatron_kd.checkpoint.refs import latest_checkpoint, read_state
from megatron_kd.config import dump_config, load_config, validate
from megatron_kd.config.loader import read_yaml, resolve_recipe_path
from megatron_kd.config.overrides import override
from megatron_kd.console import NOTICES_SHOWN_ENV
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.jsonio import read_json
from megatron_kd.study import sweep_spec
from megatron_kd.study.jobs import Job, run_jobs
from megatron_kd.study.sweep_progress import JobsProgress, following, say
from megatron_kd.study.sweep_spec import AUTO, GRID_KEYS, SWEEP_KEYS, cache_args, check_types, tokens_label

PRIMARY_FILE = "primary.json"  # in a sweep directory: its `primary:` block
MAX_POINTS = 10_000  # runs of one sweep; a paper-sized grid is a few hundred


@dataclass
class Point:
    name: str
    student: str
    teacher: dict | None  # None = the baseline
    overrides: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def _short(x) -> str:
    """`models/cpu-tiny` -> cpu-tiny; a recipe given as a file path -> its file name's stem."""
    if str(x).endswith(".yaml") or Path(str(x)).is_absolute():
        return Path(str(x)).stem
    return str(x).replace("models/", "").replace("/", "-")


def _num(x) -> str:
    return f"{float(x):g}"


def _teachers(grid: dict) -> list[dict]:
    out = [dict(t) for t in grid.get("teacher") or []]
    for t in out:
        if not isinstance(t, dict) or ("checkpoint" not in t) == (t.get("unigram") is not True):
            raise ConfigError(f"sweep grid.teacher entries need a checkpoint, or unigram: true (the smoothing "
                              f"control) and no checkpoint: {t}")
        t.setdefault("name", "unigram" if t.get("unigram") else Path(t["checkpoint"]).name)
        if _short(t["name"]) in ("", ".", ".."):  # it names the teacher's points and cache directory
            raise ConfigError(f"sweep grid.teacher entry {t} has no usable name ({t['name']!r}); give it `name: ...`")
    tg = grid.get("teacher_grid")
    if tg:
        for key in ("models", "tokens", "checkpoint"):
            if key not in tg:
                raise ConfigError(f"sweep grid.teacher_grid needs '{key}'")
        for (short, recipe), tokens in itertools.product(tg["models"].items(), tg["tokens"]):
            tok = int(float(tokens))
            out.append({"name": f"{short}@{tokens_label(tok)}", "model": recipe, "tokens": tok,
                        "checkpoint": tg["checkpoint"].format(model=short, tokens=tok)})
            if tg.get("cache"):
                out[-1]["cache"] = dict(tg["cache"])
    return out


def load_sweep(path: str | Path) -> dict:
    p = resolve_recipe_path(path)
    spec = read_yaml(p)  # line-numbered syntax errors; duplicate keys and alias bombs refused
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"unknown sweep key(s) {sorted(unknown)} in {p}; valid: {sorted(SWEEP_KEYS)}")
    check_types(spec, p)
    grid = spec.get("grid") or {}
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise ConfigError(f"unknown grid key(s) {sorted(unknown)} in {p}; valid: {sorted(GRID_KEYS)}")
    if "base" not in spec:
        raise ConfigError(f"sweep {p} has no `base:` training recipe")
    spec.setdefault("name", p.stem)
    spec.setdefault("out", f"runs/sweeps/{spec['name']}")
    spec["_path"] = str(p)
    check_size(spec)
    return spec


def grid_size(spec: dict) -> int:
    """The runs `expand` would make, from the axis lengths alone (nothing is expanded: a grid of
    a million points is refused in milliseconds, not after minutes of expansion)."""
    grid = spec.get("grid") or {}
    n = lambda key: len(grid.get(key) or []) or 1  # noqa: E731  (an absent axis is one value)
    tg = grid.get("teacher_grid") or {}
    teachers = len(grid.get("teacher") or []) + (len(tg.get("models") or {}) * len(tg.get("tokens") or [])
                                                 if isinstance(tg, dict) else 0)
    alphas = (len(grid.get("alpha") or []) + len(grid.get("alpha_schedule") or [])) or 1
    per_student = teachers * alphas * n("temperature") * n("kind") * n("top_k") + bool(spec.get("baseline", True))
    students, seeds = n("student") * n("steps"), len(spec.get("seeds") or []) or 1
    extra = len(spec.get("baseline_seeds") or []) + seeds * len(spec.get("baseline_steps") or [])
    return seeds * students * per_student + extra * students


def check_size(spec: dict) -> None:
    size = grid_size(spec)
    if size > MAX_POINTS:
        raise ConfigError(f"sweep {spec['_path']} would expand to {size:,} runs, above the limit of "
                          f"{MAX_POINTS:,}; split it into smaller sweeps or shorten the grid's axes")


def _alpha_values(grid: dict) -> list:
    """The α axis: fixed values, then each α schedule (a mapping) as one more value."""
    fixed = grid.get("alpha") or []
    scheds = grid.get("alpha_schedule") or []
    return (fixed + scheds) or [None]


def _schedule_label(s: dict) -> str:
    """`1→0 cosine`: what the report prints for a scheduled α."""
    return f"{_num(s['alpha'])}→{_num(s.get('final', s['alpha']))} {s['kind']}"


def _students(grid: dict) -> list[tuple]:
    """(student recipe, steps) pairs: each student at each length of grid.steps (None: the base's)."""
    return list(itertools.product(grid.get("student") or [None], grid.get("steps") or [None]))


def _student_at(student, steps) -> tuple[str, list[str], dict]:
    """A student at one length is a student of its own (its own baseline, its own paired
    comparisons): (name, overrides, point metadata)."""
    name = _short(student) if student else "student"
    if steps is None:
        return name, [], {}
    return f"{name}-{steps}steps", [override("train.steps", steps), "train.tokens=null"], {"student_steps": steps}


def expand(spec: dict) -> list[Point]:
    """Every point of the grid (and the baselines), with names that say the point."""
    check_size(spec)  # before any expansion
    grid = spec.get("grid") or {}
    teachers = _teachers(grid)
    axes = {k: grid.get(k) or [None] for k in ("temperature", "kind", "top_k")}
    axes = {"alpha": _alpha_values(grid), **axes}
    seeds = spec.get("seeds") or [None]
    common = list(spec.get("overrides") or [])
    if spec.get("data_seed") is not None:  # the seeds vary the initialisation; the data order is fixed
        common.append(override("data.seed", spec["data_seed"]))
    seed_varies = "initialisation" if spec.get("data_seed") is not None else "initialisation and data order"
    points = []
    for seed, (student, steps) in itertools.product(seeds, _students(grid)):
        s_name, s_ov, s_meta = _student_at(student, steps)
        seed_tag = f"__seed{seed}" if len(seeds) > 1 else ""
        base_ov = common + s_ov + ([override("run.seed", seed)] if seed is not None else [])
        if spec.get("baseline", True):
            points.append(Point(f"{s_name}__baseline{seed_tag}", student, None, base_ov + ["kd.alpha=0"],
                                {"student": s_name, "teacher": None, "alpha": 0.0, "seed": seed,
                                 "seed_varies": seed_varies, **s_meta}))
        for length in spec.get("baseline_steps") or []:  # the same run at another length, its own schedule
            points.append(Point(f"{s_name}__baseline-{length}steps{seed_tag}", student, None,
                                base_ov + ["kd.alpha=0", override("train.steps", length), "train.tokens=null"],
                                {"student": s_name, "teacher": None, "alpha": 0.0, "seed": seed,
                                 "seed_varies": seed_varies, "baseline_steps": length}))
        for t, a, temp, kind, top_k in itertools.product(teachers, *axes.values()):
            parts, ov = [s_name, f"t-{_short(t['name'])}"], list(base_ov)
            ov += ["teacher.unigram=true"] if t.get("unigram") else [override("teacher.checkpoint", t["checkpoint"])]
            if t.get("model"):
                ov.append(override("teacher.model", t["model"]))
            ov += list(t.get("overrides") or [])  # e.g. the KD options its cache serves (kd.top_k=8)
            meta = {"student": s_name, "teacher": t["name"], "teacher_model": t.get("model"),
                    "teacher_tokens": t.get("tokens"), "seed": seed, "seed_varies": seed_varies, **s_meta}
            if t.get("cache"):  # one teacher pass (the cache job) serves this teacher's points of one length
                cache_dir = Path(spec["out"]) / "caches" / (_short(t["name"]) + (f"-{steps}steps" if steps else ""))
                ov.append(override("teacher.cache", str(cache_dir)))
                meta["teacher_cache"] = str(cache_dir)
                meta["cache_args"] = " ".join(cache_args(t["cache"]))
            if isinstance(a, dict):  # a scheduled α: its start value plus kd.alpha_schedule.*
                ov += [override("kd.alpha", a["alpha"])] + [override(f"kd.alpha_schedule.{k}", v) for k, v in a.items()
                                                        if k != "alpha"]
                parts.append(f"a{_num(a['alpha'])}-{a['kind']}-{_num(a.get('final', a['alpha']))}")
                meta["alpha_schedule"] = _schedule_label(a)
                a = None
            elif a == AUTO:  # α set by the run (kd.auto), kd.alpha its ceiling; named like the fixed values
                ov += ["kd.auto.enabled=true", override("kd.alpha", sweep_spec.auto_ceiling(spec))]
                parts.append(f"a{AUTO}")
                meta["auto_ceiling"] = sweep_spec.auto_ceiling(spec)
                a = None
            for key, val, tag in (("alpha", a, "a"), ("temperature", temp, "T"), ("kind", kind, ""),
                                  ("top_k", top_k, "topk")):
                if val is not None:
                    ov.append(override(f"kd.{key}", val))
                    parts.append(f"{tag}{_num(val) if key != 'kind' else val}")
                    meta[key] = val
            meta.setdefault("alpha", None)
            points.append(Point("__".join(parts) + seed_tag, student, t, ov, meta))
    for seed, (student, steps) in itertools.product(spec.get("baseline_seeds") or [], _students(grid)):
        s_name, s_ov, s_meta = _student_at(student, steps)  # extra baselines: the noise band
        points.append(Point(f"{s_name}__baseline__seed{seed}", student, None,
                            common + s_ov + [override("run.seed", seed), "kd.alpha=0"],
                            {"student": s_name, "teacher": None, "alpha": 0.0, "seed": seed,
                             "seed_varies": seed_varies, **s_meta}))
    if not points:
        raise ConfigError(f"sweep {spec['_path']} expands to no runs: give grid.teacher(s) and/or "
                          "baseline: true")
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"two sweep points are both named {dup}: give the teachers distinct names, and "
                          "students given as file paths distinct file names (a point is named by the stem)")
    return points


def resolve_point(spec: dict, point: Point):
    """The full config of one point (student model from its recipe, run dir in the sweep)."""
    run_dir = str(Path(spec["out"]) / "runs" / point.name)
    cfg = load_config(spec["base"], point.overrides + [override("run.name", point.name), override("run.dir", run_dir)])
    if point.student:
        # The sweep's own model.* overrides (e.g. model.hidden_dropout) hold for every student too.
        model_overrides = [o for o in point.overrides if o.partition("=")[0].strip().startswith("model.")]
        model_part = load_config(point.student, model_overrides, purpose="model").model
        cfg.model = model_part
        # re-validate the combination (e.g. heads vs TP) with the student swapped in
        validate(cfg)
    if point.teacher is None:
        cfg.teacher.checkpoint = None
        cfg.teacher.cache = None
        cfg.teacher.unigram = False
    if cfg.logging.wandb.project:  # W&B groups the sweep's runs; the point's coordinates are run config
        cfg.logging.wandb.group = cfg.logging.wandb.group or spec["name"]
        cfg.logging.wandb.name = point.name
        cfg.logging.wandb.point = {k: v for k, v in point.meta.items()
                                   if k in ("student", "teacher", "teacher_tokens", "alpha", "alpha_schedule",
                                            "auto_ceiling", "temperature", "kind", "top_k", "seed", "seed_varies")}
    return cfg


def select(points: list[Point], only: list[str] | None) -> list[Point]:
    """The points whose names match any of the `only` globs (all when `only` is empty)."""
    if not only:
        return points
    chosen = [p for p in points if any(fnmatch.fnmatchcase(p.name, pat) for pat in only)]
    if not chosen:
        names = ", ".join(p.name for p in points)
        raise ConfigError(f"no sweep point matches --only {' '.join(only)}; the points are: {names}")
    return chosen


def write_recipes(spec: dict, only: list[str] | None = None) -> list[tuple[Point, Path]]:
    """One resolved recipe per point (those matching `only`, a list of globs, when given)."""
    out = Path(spec["out"])
    all_points = expand(spec)
    # Every point resolves (and validates) before anything is written: a bad point leaves no
    # half-written sweep directory behind.
    resolved = [(point, resolve_point(spec, point)) for point in select(all_points, only)]
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    written = []
    for point, cfg in resolved:
        path = out / "recipes" / f"{point.name}.yaml"
        dump_config(cfg, path)
        written.append((point, path))
    # points.json lists the whole grid: the report reads it, whatever subset ran this time.
    write_text_atomic(out / "points.json", json.dumps([{"name": p.name, **p.meta} for p in all_points], indent=2))
    # The registered primary contrasts (null without a `primary:` block): `mkd report SWEEP_DIR`
    # reads the claims through them, as the sweep's own report does.
    write_text_atomic(out / PRIMARY_FILE, json.dumps(spec.get("primary")) + "\n")
    return written


def evaluate_teachers(spec: dict) -> dict:
    """Each distinct teacher's own validation losses on the sweep's sets (once; cached)."""
    base = load_config(spec["base"], list(spec.get("overrides") or []))
    out = Path(spec["out"]) / "teachers"
    out.mkdir(parents=True, exist_ok=True)
    results, by_checkpoint = {}, {}
    for t in _teachers(spec.get("grid") or {}):
        target = by_checkpoint.setdefault(t.get("checkpoint") or "unigram", out / f"{_short(t['name'])}.json")
        if not target.is_file() and t.get("unigram"):
            reader = next(p for p in expand(spec) if p.teacher is not None and p.teacher.get("unigram"))
            _evaluate_unigram(resolve_point(spec, reader), target)
        elif not target.is_file():  # once per checkpoint
            say(f"[sweep] teacher {t['name']}: evaluating it on {', '.join(base.data.valid) or 'its validation sets'}")
            cmd = [sys.executable, "-m", "megatron_kd", "eval", _argument_path(t["checkpoint"]),
                   override("data.valid", base.data.valid), override("train.seq_length", base.train.seq_length),
                   override("logging.eval_samples", base.logging.eval_samples), "--json-out",
                   _argument_path(target)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["failed"])[-1]
                raise ConfigError(f"evaluating teacher {t['name']} failed: {last}")
        results[t["name"]] = read_json(target, dict, "teacher evaluation")
    return results


def _argument_path(path) -> str:
    """`path` as a command-line argument that no parser takes for an option (`-x` -> `./-x`)."""
    text = str(path)
    return f"./{text}" if text.startswith("-") else text


def _evaluate_unigram(cfg, target: Path) -> None:
    """The unigram teacher's own loss on each validation set (of a point that reads it), in the
    file format of `mkd eval --json-out`."""
    from megatron_kd.distill.unigram import unigram_log_probs, unigram_loss  # lazy: numpy and the corpus

    logp = unigram_log_probs(cfg.data.train, cfg.data.train_weights, cfg.model.vocab_size)
    loss = {name: unigram_loss(logp, prefix) for name, prefix in cfg.data.valid.items()}
    write_text_atomic(target, json.dumps({"loss": loss, "teacher": "unigram"}, indent=2))


def finished(run_dir: Path) -> bool:
    latest = latest_checkpoint(run_dir / "checkpoints")
    return latest is not None and read_state(latest)["kind"] == "final"


def cache_recipe(spec: dict, cache: str) -> Path:
    """The recipe a teacher's cache job runs: that of a point reading the cache. Every reader of
    one cache has one length (a cache per teacher and student length of grid.steps): a run from a
    cache builds its data stream for the cache's sample count (training/loop.py), and its paired
    baseline builds one for its own length, so a cache built for a longer run would feed the KD
    points another stream than their baselines once the longer run crosses an epoch of the data
    (megatron-core shuffles a stream by its number of epochs)."""
    users = [p for p in expand(spec) if p.meta.get("teacher_cache") == cache]
    if not users:
        raise ConfigError(f"no point of sweep {spec['_path']} reads the teacher cache {cache}")
    path = Path(cache).with_name(f"{Path(cache).name}.recipe.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    dump_config(resolve_point(spec, users[0]), path)
    return path


def build_caches(spec: dict, pending: list[tuple], nproc: int, jobs: int = 1) -> None:
    """Each cached teacher's cache, once, before the points that read it (the teacher runs once
    for all of them), `jobs` cache jobs at a time; a complete cache is reused."""
    by_cache: dict[str, list] = {}
    for point, recipe, _ in pending:
        if point.meta.get("teacher_cache"):
            by_cache.setdefault(point.meta["teacher_cache"], []).append((point, recipe))
    todo = []
    for cache, users in by_cache.items():
        point = users[0][0]
        teacher = point.meta["teacher"]
        if (Path(cache) / "COMPLETE").is_file():
            say(f"[sweep] teacher {teacher}: cache {cache} complete, reused by {len(users)} points")
            continue
        cmd = [sys.executable, "-m", "megatron_kd", "teacher-cache", _argument_path(cache_recipe(spec, cache)),
               "--out", _argument_path(cache), *point.meta["cache_args"].split()]
        cmd += ["--nproc", str(nproc)] if nproc > 1 else []
        log = Path(f"{cache}.log")  # beside the cache: caches/NAME.log

        def done(code: int, text: str, teacher=teacher, log=log) -> None:
            last = (text.strip().splitlines() or ["(no output)"])[-1]
            if code != 0:
                raise ConfigError(f"the teacher cache job for {teacher} failed: {last}; log: {log}")
            say(f"[sweep] {last}")

        todo.append((f"cache {Path(cache).name}",
                     Job(cmd, log, done, start=f"[sweep] teacher {teacher}: one teacher pass into {cache} for "
                                               f"{len(users)} points")))
    run_followed("teacher caches", todo, jobs, done_before=len(by_cache) - len(todo), total=len(by_cache))


def run_followed(what: str, named: list[tuple[str, Job]], lanes: int, done_before: int = 0,
                 total: int | None = None) -> None:
    """study/jobs.run_jobs, with a progress line every PROGRESS_EVERY_S while no job ends
    (study/sweep_progress.py): the jobs write only to their logs."""
    if not named:
        return
    progress = JobsProgress(what, [(name, job.log) for name, job in named], lanes, done_before, total)
    for name, job in named:
        def done(code: int, text: str, then=job.done, name=name) -> None:
            then(code, text)  # prints the job's own line, or raises
            progress.finished(name)

        job.done = done
    # The sweep and its jobs are one process tree: megatron-core's deprecation notices, which each
    # job would write into its log, are not said (runtime/cpu_compat.py).
    shown = os.environ.get(NOTICES_SHOWN_ENV)
    os.environ[NOTICES_SHOWN_ENV] = "all"
    try:
        with following(progress):
            run_jobs([job for _, job in named], lanes)
    finally:
        if shown is None:
            os.environ.pop(NOTICES_SHOWN_ENV, None)
        else:
            os.environ[NOTICES_SHOWN_ENV] = shown


def teacher_points(spec: dict, points: list[Point]) -> dict[str, str]:
    """{teacher name: the point of this sweep that trains it}: a teacher whose checkpoint is a
    point's run directory (or one of its checkpoints), as when each size of a scaling-law sweep
    teaches the others. Such a point runs before any cache or point that reads it."""
    runs = {(Path(spec["out"]) / "runs" / p.name).resolve(): p for p in points}
    out = {}
    for t in _teachers(spec.get("grid") or {}):
        if t.get("unigram"):
            continue
        ckpt = Path(t["checkpoint"]).resolve()
        for d in (ckpt, *ckpt.parents):
            if d in runs:
                if runs[d].teacher is not None:
                    raise ConfigError(f"teacher {t['name']} is sweep point {runs[d].name}, which itself reads a "
                                      "teacher; a teacher trained by the sweep must be a baseline")
                out[t["name"]] = runs[d].name
                break
    return out


def run_local(spec: dict, nproc: int = 1, jobs: int = 1, only: list[str] | None = None) -> list[str]:
    """Run every point here; finished runs are skipped, partial ones resume. `jobs` points run
    at the same time (each with `nproc` processes), e.g. one per core for CPU-sized models.
    Points that train a teacher of the sweep run first, then the caches, then the rest."""
    pending, done_names = [], set()
    for point, recipe in write_recipes(spec, only):
        run_dir = Path(spec["out"]) / "runs" / point.name
        if finished(run_dir):
            say(f"[sweep] {point.name}: finished, skipped")
            done_names.add(point.name)
        else:
            pending.append((point, recipe, run_dir))
    trains = teacher_points(spec, expand(spec))
    first = set(trains.values())
    for point, _, _ in pending:
        maker = trains.get(point.meta.get("teacher"))
        if maker and maker not in done_names and not any(p.name == maker for p, _, _ in pending) \
                and not finished(Path(spec["out"]) / "runs" / maker):
            raise ConfigError(f"sweep point {point.name} reads teacher {point.meta['teacher']}, which sweep point "
                              f"{maker} trains and has not run; add it to --only (or run the whole sweep)")
    ran: list[str] = []
    total = len(pending) + len(done_names)
    teachers_first = [x for x in pending if x[0].name in first]
    run_followed("runs", _train_jobs(teachers_first, nproc, ran), jobs, len(done_names), total)
    rest = [x for x in pending if x[0].name not in first]
    build_caches(spec, rest, nproc, jobs)
    run_followed("runs", _train_jobs(rest, nproc, ran), jobs, len(done_names) + len(ran), total)
    return ran


def _train_jobs(pending: list[tuple], nproc: int, ran: list[str]) -> list[tuple[str, Job]]:
    todo = []
    for point, recipe, run_dir in pending:
        cmd = [sys.executable, "-m", "megatron_kd", "train", _argument_path(recipe)]
        cmd += ["--nproc", str(nproc)] if nproc > 1 else []

        def done(code: int, text: str, point=point, run_dir=run_dir) -> None:
            if code != 0:
                last = (text.strip().splitlines() or ["failed"])[-1]
                raise ConfigError(f"sweep point {point.name} failed ({last}); log: {run_dir / 'train.log'}")
            ends = [line for line in text.splitlines() if line.startswith(("done:", "already complete:"))]
            say(f"[sweep] {point.name}: {ends[-1] if ends else 'finished'}")
            ran.append(point.name)

        todo.append((point.name, Job(cmd, run_dir / "train.log", done, start=f"[sweep] {point.name}: training")))
    return todo
