"""The shape of a sweep YAML (see study/sweep.py's doc): each key of the type expand() reads,
checked before anything is expanded; a wrong one is one line naming the key."""

from __future__ import annotations

import os
from pathlib import Path

from megatron_kd.distill.cache_layout import MAX_DRAWS, VALUE_DTYPES, ZSTD_LEVELS
from megatron_kd.errors import ConfigError
from megatron_kd.study.primary import check_names, parse_auto, parse_primary

TEACHER_KEYS = {"name", "checkpoint", "model", "tokens", "cache", "overrides", "unigram"}
GRID_KEYS = {"student", "steps", "teacher", "teacher_grid", "alpha", "alpha_schedule", "temperature", "kind", "top_k"}
SCHEDULE_KEYS = {"alpha", "kind", "final", "warmup_fraction", "decay_fraction"}
SWEEP_KEYS = {"name", "base", "out", "overrides", "seeds", "baseline", "baseline_seeds", "baseline_steps", "grid",
              "data_seed", "power", "primary", "auto_ceiling"}
AUTO = "auto"  # grid.alpha's value for a kd.auto point (α set by the run, kd.alpha its ceiling)
DEFAULT_AUTO_CEILING = 1.0
POWER_KEYS = {"sigma", "sigma_ood", "require"}


def check_types(spec: dict, p: Path) -> None:
    """Each sweep key has the shape expand() reads; a wrong one is one line naming the key."""
    def need(ok: bool, key: str, shape: str) -> None:
        if not ok:
            raise ConfigError(f"sweep {p}: `{key}` must be {shape}; see recipes/sweeps/cpu-mini.yaml")

    def is_list(v, kinds) -> bool:
        return v is None or (isinstance(v, list) and all(isinstance(x, kinds) and not isinstance(x, bool)
                                                          for x in v))

    for key in ("name", "base", "out"):
        need(spec.get(key) is None or isinstance(spec[key], str), key, "a string")
    need(is_list(spec.get("overrides"), str), "overrides", "a list of key=value strings")
    need(is_list(spec.get("seeds"), int), "seeds", "a list of integers")
    need(is_list(spec.get("baseline_seeds"), int), "baseline_seeds", "a list of integers")
    need(is_list(spec.get("baseline_steps"), int) and all(x >= 1 for x in spec.get("baseline_steps") or []),
         "baseline_steps", "a list of step counts (integers >= 1)")
    need(isinstance(spec.get("baseline", True), bool), "baseline", "true or false")
    steps_axis = (spec.get("grid") or {}).get("steps") if isinstance(spec.get("grid"), dict) else None
    need(is_list(steps_axis, int) and all(x >= 1 for x in steps_axis or []), "grid.steps",
         "a list of student step counts (integers >= 1)")
    if steps_axis and spec.get("baseline_steps"):
        raise ConfigError(f"sweep {p}: give the students' lengths as grid.steps or as baseline_steps, not both "
                          "(grid.steps already runs each student's baseline at every length)")
    grid = spec.get("grid")
    need(grid is None or isinstance(grid, dict), "grid", "a mapping of axes to lists")
    grid = grid or {}
    for key, kinds in (("temperature", (int, float)), ("kind", str), ("top_k", int), ("student", str)):
        need(is_list(grid.get(key), kinds), f"grid.{key}", "a list of " + ("strings" if kinds is str else "numbers"))
    _check_alpha(spec, grid, need, is_list)
    teachers = grid.get("teacher")
    need(teachers is None or (isinstance(teachers, list) and all(isinstance(t, dict) for t in teachers)),
         "grid.teacher", "a list of {name, checkpoint, model} mappings")
    for t in teachers or []:
        need(set(t) <= TEACHER_KEYS, "grid.teacher[]", f"a mapping of {', '.join(sorted(TEACHER_KEYS))}")
        need(isinstance(t.get("name", ""), str), "grid.teacher[].name", "a string")
        need(is_list(t.get("overrides"), str), "grid.teacher[].overrides",
             "a list of key=value strings for this teacher's points (e.g. kd.top_k=8)")
        if t.get("unigram"):
            need(t["unigram"] is True and "checkpoint" not in t and "cache" not in t and "model" not in t,
                 "grid.teacher[].unigram", "true, in an entry with no checkpoint, model or cache (the unigram "
                 "teacher has none)")
            continue
        need(t.get("unigram") in (None, False), "grid.teacher[].unigram", "true or false")
        need(isinstance(t.get("checkpoint"), str), "grid.teacher[].checkpoint", "a path")
        need(_cache_ok(t.get("cache")), "grid.teacher[].cache", CACHE_HELP)
    need(spec.get("data_seed") is None or (isinstance(spec["data_seed"], int) and spec["data_seed"] >= 0),
         "data_seed", "a non-negative integer")
    scheds = grid.get("alpha_schedule")
    need(scheds is None or (isinstance(scheds, list) and all(
        isinstance(x, dict) and set(x) <= SCHEDULE_KEYS and isinstance(x.get("alpha"), (int, float))
        and isinstance(x.get("kind"), str) for x in scheds)), "grid.alpha_schedule",
        "a list of {alpha, kind, final[, warmup_fraction, decay_fraction]} mappings")
    tg = grid.get("teacher_grid")
    cached = any(isinstance(t, dict) and t.get("cache") for t in teachers or []) or (
        isinstance(tg, dict) and bool(tg.get("cache")))
    if cached and len(spec.get("seeds") or []) > 1 and spec.get("data_seed") is None:
        raise ConfigError(f"sweep {p}: a cached teacher serves one data order; with several `seeds`, set "
                          "`data_seed: N` so the seeds vary the students' initialisation only")
    if tg is not None:
        need(isinstance(tg, dict), "grid.teacher_grid", "a mapping with models, tokens and checkpoint")
        need(isinstance(tg.get("models"), dict), "grid.teacher_grid.models", "a mapping of short names to recipes")
        need(is_list(tg.get("tokens"), (int, float, str)) and tg.get("tokens") is not None,
             "grid.teacher_grid.tokens", "a list of token counts")
        need(isinstance(tg.get("checkpoint"), str), "grid.teacher_grid.checkpoint",
             "a path pattern with {model} and {tokens}")
        need(set(tg) <= {"models", "tokens", "checkpoint", "cache"}, "grid.teacher_grid",
             "a mapping with models, tokens, checkpoint and optionally cache")
        need(_cache_ok(tg.get("cache")), "grid.teacher_grid.cache", CACHE_HELP)
        try:
            [int(float(x)) for x in tg["tokens"]]
            tg["checkpoint"].format(model="m", tokens=1)
        except (ValueError, KeyError, IndexError) as exc:
            raise ConfigError(f"sweep {p}: grid.teacher_grid is malformed ({exc}); tokens are numbers "
                              "and checkpoint a pattern using only {model} and {tokens}") from exc
    _check_repeats(spec, grid, p)
    _check_teacher_overrides(teachers or [], p)
    _check_power(spec.get("power"), p)
    check_primary(spec, p)


def _check_alpha(spec: dict, grid: dict, need, is_list) -> None:
    """grid.alpha: numbers and optionally `auto`; auto_ceiling in (0, 1], given with an `auto`."""
    alphas = grid.get("alpha")
    numbers = [a for a in alphas if a != AUTO] if isinstance(alphas, list) else alphas  # a scalar: refused
    need(is_list(numbers, (int, float)), "grid.alpha",
         f"a list of numbers, and optionally `{AUTO}` (a kd.auto point per teacher)")
    ceiling = spec.get("auto_ceiling")
    need(ceiling is None or (_positive(ceiling) and ceiling <= 1), "auto_ceiling",
         "a number in (0, 1]: kd.alpha of the `auto` points (the most KD weight kd.auto may give)")
    need(ceiling is None or (isinstance(alphas, list) and AUTO in alphas), "auto_ceiling",
         f"given with `{AUTO}` in grid.alpha (it is the ceiling of the auto points)")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < float("inf")


def _check_power(power, p: Path) -> None:
    """`power: {sigma, sigma_ood, require: {test: nats}}`: the noise `mkd sweep` checks the
    design's power at before launching (docs/report.md, "Power before a sweep")."""
    if power is None:
        return
    shape = ("a mapping {sigma: S, sigma_ood: S2, require: {'claim 1': NATS, ...}} with positive finite "
             "numbers (sigma: the residual sd of a run's loss, e.g. from `mkd power --from` a prior sweep)")
    ok = isinstance(power, dict) and set(power) <= POWER_KEYS and _positive(power.get("sigma"))
    ok = ok and (power.get("sigma_ood") is None or _positive(power["sigma_ood"]))
    require = power.get("require") if isinstance(power, dict) else None
    ok = ok and (require is None or (isinstance(require, dict) and all(
        isinstance(k, str) and _positive(v) for k, v in require.items())))
    if not ok:
        raise ConfigError(f"sweep {p}: `power` must be {shape}")


def check_primary(spec: dict, p: Path) -> None:
    """`primary: {claim N: its contrast}` (study/primary.py): the shape, and the teachers and α it
    names against the grid's (its sets are checked once the recipe's validation sets are known:
    `mkd power`, `mkd report`)."""
    if spec.get("primary") is None:
        return
    reg = parse_primary(spec["primary"], f"sweep {p}")
    grid = spec.get("grid") or {}
    teachers = grid_teacher_names(grid)
    controls = {t.get("name", "unigram") for t in grid.get("teacher") or [] if t.get("unigram")}
    check_names(reg, f"sweep {p}", teachers, controls, alphas=fixed_alphas(grid))
    if parse_auto(spec["primary"], f"sweep {p}") and AUTO not in (grid.get("alpha") or []):
        raise ConfigError(f"sweep {p}: `primary.auto` registers the test of the kd.auto points, and grid.alpha "
                          f"has no `{AUTO}`; add it to grid.alpha or drop the entry")


def fixed_alphas(grid: dict) -> list:
    """grid.alpha's fixed values (without its `auto` point)."""
    return [a for a in grid.get("alpha") or [] if a != AUTO]


def auto_ceiling(spec: dict) -> float:
    """kd.alpha of the sweep's `auto` points: the most KD weight kd.auto may give."""
    return float(spec.get("auto_ceiling", DEFAULT_AUTO_CEILING))


def grid_teacher_names(grid: dict) -> set[str]:
    """The names the sweep's points give their teachers (sweep.expand): an entry's `name` (else
    the unigram's or its checkpoint directory's), a teacher_grid's MODEL@TOKENS."""
    names = {t.get("name") or ("unigram" if t.get("unigram") else Path(t["checkpoint"]).name)
             for t in grid.get("teacher") or []}
    tg = grid.get("teacher_grid") or {}
    for short in tg.get("models") or {}:
        names |= {f"{short}@{tokens_label(int(float(tok)))}" for tok in tg.get("tokens") or []}
    return names


def tokens_label(n: int) -> str:
    """A token count as teacher names carry it: 1.11M, 369K, 512."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _check_repeats(spec: dict, grid: dict, p: Path) -> None:
    """A value given twice on one axis would be two runs of one point (and two points of one
    name): one line naming the axis and the value, not the teachers' names."""
    tg = grid.get("teacher_grid") if isinstance(grid.get("teacher_grid"), dict) else {}
    axes = {key: spec.get(key) for key in ("seeds", "baseline_seeds", "baseline_steps")}
    axes |= {f"grid.{key}": grid.get(key) for key in ("student", "steps", "alpha", "temperature", "kind", "top_k")}
    axes["grid.teacher_grid.tokens"] = [int(float(x)) for x in tg.get("tokens") or []]
    for key, values in axes.items():
        seen: list = []
        for value in values or []:
            if value in seen:
                raise ConfigError(f"sweep {p}: `{key}` lists {value!r} twice; give each value once (a repeated "
                                  "value would run the same point twice)")
            seen.append(value)
    both = [x for x in spec.get("baseline_seeds") or [] if x in (spec.get("seeds") or [])]
    if both:
        raise ConfigError(f"sweep {p}: seed {both[0]!r} is in both `seeds` and `baseline_seeds`; baseline_seeds "
                          "are extra seeds for the baselines only (every seed in `seeds` already runs a "
                          "baseline): list it once")


# Keys that shape a run's token stream (which sequences, in which order): a teacher's points
# must read the stream of the baseline they are paired with, so its overrides may not set them.
STREAM_KEYS = ("data.", "train.steps", "train.tokens", "train.global_batch_size", "train.seq_length", "run.seed")


def _check_teacher_overrides(teachers: list[dict], p: Path) -> None:
    seen: dict = {}
    for t in teachers:  # one teacher under two names would count twice in the report
        same = (os.path.normpath(t["checkpoint"]) if isinstance(t.get("checkpoint"), str) else None,
                bool(t.get("unigram")), repr(t.get("model")), repr(t.get("tokens")), repr(t.get("cache")),
                tuple(t.get("overrides") or []))
        if same in seen:
            raise ConfigError(f"sweep {p}: grid.teacher entries {seen[same]!r} and {t.get('name')!r} are the same "
                              "teacher (checkpoint, model, cache and overrides): it would count twice in the "
                              "report; keep one entry")
        seen[same] = t.get("name")
    for t in teachers:
        for text in t.get("overrides") or []:
            key = text.partition("=")[0].strip()
            if key.startswith(STREAM_KEYS) or key in ("data", "train", "run"):
                raise ConfigError(f"sweep {p}: teacher {t.get('name') or t.get('checkpoint')}'s override {key} "
                                  "changes the data its points train on, which then differs from their paired "
                                  "baseline's; set it in the sweep's `overrides` (every point) instead")


CACHE_KEYS = {"top_k", "sample", "dtype", "zstd"}  # `mkd teacher-cache --top-k / --sample / --dtype / --zstd`
CACHE_HELP = ("a mapping {top_k: K} or {sample: N} (K a positive integer or 'all', N in 1..255), "
              "optionally with dtype: fp32|fp16|bf16 and zstd: LEVEL")


def _int_in(x, low: int, high: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and low <= x <= high


def _cache_ok(cache) -> bool:
    if cache is None:
        return True
    if not isinstance(cache, dict) or not set(cache) <= CACHE_KEYS or ("top_k" in cache and "sample" in cache):
        return False
    k = cache.get("top_k", 64)
    return ((k == "all" or _int_in(k, 1, 2 ** 31)) and ("sample" not in cache or _int_in(cache["sample"], 1, MAX_DRAWS))
            and cache.get("dtype", "fp32") in VALUE_DTYPES and _int_in(cache.get("zstd", 0), 0, ZSTD_LEVELS[-1]))


def cache_args(cache: dict) -> list[str]:
    """The `mkd teacher-cache` options a teacher entry's `cache:` mapping asks for."""
    out = ["--sample", str(cache["sample"])] if "sample" in cache else ["--top-k", str(cache.get("top_k", 64))]
    if cache.get("dtype", "fp32") != "fp32":
        out += ["--dtype", cache["dtype"]]
    return out + (["--zstd", str(cache["zstd"])] if cache.get("zstd") else [])
