"""Recipe YAML + `key.sub=value` overrides -> typed :class:`RunConfig`.

A recipe may build on others with a top-level `base:` (a path or a list of paths, relative to
the recipe's folder or to the recipes root, ".yaml" optional). Bases merge in order, the recipe
itself last, then the command-line overrides. Unknown keys and wrong types are errors that name
the key, the file, and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from megatron_kd.config import yaml_safe
from megatron_kd.config.schema import ModelConfig, RunConfig
from megatron_kd.config.validate import validate
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic

RECIPES_ROOT = Path(os.environ.get("MKD_RECIPES", Path(__file__).resolve().parents[2] / "recipes"))


def resolve_recipe_path(name: str | os.PathLike, relative_to: Path | None = None) -> Path:
    """Find a recipe by path, or by name under the recipes root (".yaml" optional)."""
    raw = Path(name)
    candidates = []
    for root in ([relative_to] if relative_to else []) + [Path.cwd(), RECIPES_ROOT]:
        candidates += [root / raw, root / f"{raw}.yaml"]
    if raw.is_absolute():
        candidates = [raw, Path(f"{raw}.yaml")]
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    raise ConfigError(
        f"recipe '{name}' not found (looked in {relative_to or Path.cwd()} and {RECIPES_ROOT}); "
        "give a path to a .yaml file or a name such as 'train/tiny-mock' (see `mkd recipes`)"
    )


_TOO_LONG = "a number too long to read (over 4300 digits); give a value of sensible size"


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {path} is not UTF-8 text (byte {exc.start}); give a YAML recipe file") from exc
    try:
        data = yaml_safe.load(text)
    except yaml_safe.YAMLRefused as exc:
        raise ConfigError(f"recipe {path}: {exc}") from exc
    except ValueError as exc:  # Python refuses to read an integer of more than 4300 digits
        raise ConfigError(f"recipe {path} holds {_TOO_LONG}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"YAML syntax error in {where}: {problem}; fix the recipe") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def deep_merge(base: dict, top: dict) -> dict:
    """Merge `top` over `base`; mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


MAX_RECIPE_FILES = 256  # distinct files in one recipe's `base:` graph; shipped recipes use three or four


def load_recipe_dict(path: Path, _seen: tuple[Path, ...] = (), _loaded: dict | None = None) -> dict:
    """A recipe with its `base:` chain merged in; the result has no `base` key. Each file is read
    and merged once per load (`_loaded`, by resolved path): bases that share bases (a diamond)
    would otherwise be loaded once per path through the graph, 2**depth times."""
    loaded = {} if _loaded is None else _loaded
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"recipe bases form a cycle: {chain}; remove one `base:` entry")
    if path in loaded:
        return loaded[path]
    if len(loaded) >= MAX_RECIPE_FILES:
        raise ConfigError(f"recipe {_seen[0] if _seen else path} builds on more than {MAX_RECIPE_FILES} recipe "
                          "files through `base:`; merge some of them")
    loaded[path] = {}  # counted now: a wide graph is refused before all of it is read
    data = read_yaml(path)
    bases = data.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"`base:` in {path} must be a recipe path or a list of them")
    merged: dict = {}
    for b in bases:
        base = load_recipe_dict(resolve_recipe_path(b, path.parent), (*_seen, path), loaded)
        merged = deep_merge(merged, base)
    loaded[path] = deep_merge(merged, data)
    return loaded[path]


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.steps=20` -> (["train", "steps"], 20); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not key=value; write e.g. train.steps=20")
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{text}' has an empty key part; write e.g. parallel.tp=2")
    try:
        value = yaml_safe.load(raw) if raw.strip() else ""
    except yaml_safe.YAMLRefused as exc:
        raise ConfigError(f"override '{key}': {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"override '{key}' holds {_TOO_LONG}") from exc
    except yaml.YAMLError:
        value = raw
    if _comment_cut(raw, value):  # `run.dir=/data/out #3` means that path, not a YAML comment
        value = raw.strip()
    return parts, value


def _comment_cut(raw: str, value: Any) -> bool:
    """Whether YAML read part of a plain (unquoted) value as a comment: ` #` in a path typed on
    the command line is part of the path (no one writes a comment inside one argument)."""
    text = raw.strip()
    plain = bool(text) and text[0] not in "'\"[{"
    return plain and (value is None or isinstance(value, str)) and re.search(r"(^|\s)#", text) is not None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = dict(data)
    for text in overrides:
        parts, value = parse_override(text)
        node: dict = data
        for p in parts[:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = value
    return data


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if origin is dict:
        return "mapping of " + " to ".join(_type_name(a) for a in get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`; convert only lossless YAML quirks."""
    origin = get_origin(tp)
    bad = ConfigError(
        f"{key} = {value!r} in {source} has the wrong type: expected {_type_name(tp)}"
    )
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            try:
                return _coerce(value, option, key, source)
            except ConfigError as exc:
                errors.append(exc)
        raise bad
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{key} = {value!r} in {source} is not one of {', '.join(map(repr, choices))}{hint}"
        )
    if origin is dict:
        key_tp, value_tp = get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise bad
        return {_coerce(k, key_tp, key, source): _coerce(v, value_tp, f"{key}.{k}", source)
                for k, v in value.items()}
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # Token counts are written 50e9 (YAML 1.1 reads that as a string) or 5.0e+10.
        if isinstance(value, (float, str)) and not isinstance(value, bool):
            try:
                as_float = float(value)
            except ValueError:
                raise bad from None
            if as_float.is_integer():
                return int(as_float)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def coerce_value(value: Any, tp: Any, key: str, source: str) -> Any:
    """`value` as type `tp` where that loses nothing (an int written 4.0 or "4"), else one line
    naming `key` and `source`: for values read from other tools' files (Megatron-LM's args)."""
    return _coerce(value, tp, key, source)


def checked_model(m: ModelConfig, source: str) -> ModelConfig:
    """A ModelConfig made from another tool's file (a Hugging Face config.json, Megatron-LM's
    saved args), typed and validated as a model recipe is: a value a recipe could not hold
    (a float size, an unknown router score function, 0 experts per token) is one line naming
    the file, before any tensor is allocated from it."""
    m = build_dataclass(ModelConfig, dataclasses.asdict(m), "", source)
    try:
        validate(RunConfig(model=m), purpose="model")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return m


def build_dataclass(cls: type, data: Any, prefix: str, source: str) -> Any:
    """Construct dataclass `cls` from a mapping; unknown keys are errors with a suggestion."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{prefix or 'recipe'} in {source} must be a mapping of keys, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            options = [f"{prefix}.{k}" if prefix else k for k in fields]
            close = difflib.get_close_matches(full, options, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key '{full}' in {source}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value, full, source)
        else:
            kwargs[key] = _coerce(value, tp, full, source)
    return cls(**kwargs)


def load_config(recipe: str | os.PathLike | None, overrides: list[str] | None = None,
                purpose: str = "train") -> RunConfig:
    """Load, merge, override, type-check and validate a recipe (see validate's `purpose`)."""
    overrides = list(overrides or [])
    if recipe is None:
        data, source = {}, "overrides"
    else:
        path = resolve_recipe_path(recipe)
        data, source = load_recipe_dict(path), str(path)
    data = apply_overrides(data, overrides)
    if overrides:
        source = f"{source} (with overrides)"
    cfg = build_dataclass(RunConfig, data, "", source)
    validate(cfg, purpose=purpose)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config (what actually ran) as YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
