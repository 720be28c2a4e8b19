"""A sweep YAML loaded (its shape checked by sweep_spec.py) and expanded into its points: every
teacher × student × α × temperature × KD kind/top-k of the grid, the baselines, the seeds, each
point named by what it is and carrying its overrides and coordinates (see sweep.py for the YAML);
which points train a teacher of the sweep; the `--only` selection."""

from __future__ import annotations

import fnmatch
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from megatron_kd.config.loader import read_yaml, resolve_recipe_path
from megatron_kd.config.overrides import override
from megatron_kd.errors import ConfigError
from megatron_kd.study import sweep_spec
from megatron_kd.study.sweep_spec import AUTO, GRID_KEYS, SWEEP_KEYS, cache_args, check_types, tokens_label

MAX_POINTS = 10_000  # runs of one sweep; a paper-sized grid is a few hundred


@dataclass
class Point:
    name: str
    student: str
    teacher: dict | None  # None = the baseline
    overrides: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def short_name(x) -> str:
    """`models/cpu-tiny` -> cpu-tiny; a recipe given as a file path -> its file name's stem."""
    if str(x).endswith(".yaml") or Path(str(x)).is_absolute():
        return Path(str(x)).stem
    return str(x).replace("models/", "").replace("/", "-")


def _num(x) -> str:
    return f"{float(x):g}"


def grid_teachers(grid: dict) -> list[dict]:
    out = [dict(t) for t in grid.get("teacher") or []]
    for t in out:
        if not isinstance(t, dict) or ("checkpoint" not in t) == (t.get("unigram") is not True):
            raise ConfigError(f"sweep grid.teacher entries need a checkpoint, or unigram: true (the smoothing "
                              f"control) and no checkpoint: {t}")
        t.setdefault("name", "unigram" if t.get("unigram") else Path(t["checkpoint"]).name)
        if short_name(t["name"]) in ("", ".", ".."):  # it names the teacher's points and cache directory
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
    name = short_name(student) if student else "student"
    if steps is None:
        return name, [], {}
    return f"{name}-{steps}steps", [override("train.steps", steps), "train.tokens=null"], {"student_steps": steps}


def expand(spec: dict) -> list[Point]:
    """Every point of the grid (and the baselines), with names that say the point."""
    check_size(spec)  # before any expansion
    grid = spec.get("grid") or {}
    teachers = grid_teachers(grid)
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
            parts, ov = [s_name, f"t-{short_name(t['name'])}"], list(base_ov)
            ov += ["teacher.unigram=true"] if t.get("unigram") else [override("teacher.checkpoint", t["checkpoint"])]
            if t.get("model"):
                ov.append(override("teacher.model", t["model"]))
            ov += list(t.get("overrides") or [])  # e.g. the KD options its cache serves (kd.top_k=8)
            meta = {"student": s_name, "teacher": t["name"], "teacher_model": t.get("model"),
                    "teacher_tokens": t.get("tokens"), "seed": seed, "seed_varies": seed_varies, **s_meta}
            if t.get("cache"):  # one teacher pass (the cache job) serves this teacher's points of one length
                cache_dir = Path(spec["out"]) / "caches" / (short_name(t["name"]) + (f"-{steps}steps" if steps else ""))
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


def select(points: list[Point], only: list[str] | None) -> list[Point]:
    """The points whose names match any of the `only` globs (all when `only` is empty)."""
    if not only:
        return points
    chosen = [p for p in points if any(fnmatch.fnmatchcase(p.name, pat) for pat in only)]
    if not chosen:
        names = ", ".join(p.name for p in points)
        raise ConfigError(f"no sweep point matches --only {' '.join(only)}; the points are: {names}")
    return chosen


def teacher_points(spec: dict, points: list[Point]) -> dict[str, str]:
    """{teacher name: the point of this sweep that trains it}: a teacher whose checkpoint is a
    point's run directory (or one of its checkpoints), as when each size of a scaling-law sweep
    teaches the others. Such a point runs before any cache or point that reads it."""
    runs = {(Path(spec["out"]) / "runs" / p.name).resolve(): p for p in points}
    out = {}
    for t in grid_teachers(spec.get("grid") or {}):
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
