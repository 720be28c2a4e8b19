"""Reading the JSON and JSONL files runs leave behind (metrics, sweep points, states, HF configs)
with one-line errors naming the file and what is wrong, instead of a decoder traceback. Values
nested deeper than MAX_DEPTH are refused (the decoder, and anything walking the value, recurses
per level), and `require_fields` checks a record's fields against a small schema: hand-edited
files fail as one line naming the file and the field, not as a KeyError or TypeError later."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from megatron_kd.errors import ConfigError

log = logging.getLogger("megatron_kd")

MAX_DEPTH = 64  # nesting levels; the files runs write nest three or four


def _too_deep(value: object) -> bool:
    """Whether `value` nests more than MAX_DEPTH containers (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                return True
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False


class _TooDeep(ValueError):
    pass


def _decode(text: str) -> object:
    """json.loads, with a document nested too deeply raised as ValueError like any bad JSON."""
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
        deep = True
    else:
        deep = _too_deep(value)
    if deep:
        raise _TooDeep(f"nested more than {MAX_DEPTH} levels deep")
    return value


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               dict: "a mapping", list: "a list"}


def require_fields(record: object, fields: dict, where: str, fix: str = "restore or re-create it",
                   optional: dict | None = None) -> dict:
    """`record` is a mapping holding each of `fields` (name -> type or tuple of types; an int
    passes for float, a bool for neither), and each of `optional` that it has is of its type or
    null; else one ConfigError naming `where` and the field."""
    if not isinstance(record, dict):
        raise ConfigError(f"{where} is a JSON {type(record).__name__}, not a mapping; {fix}")
    present = {k: (v if isinstance(v, tuple) else (v,)) + (type(None),)
               for k, v in (optional or {}).items() if k in record}
    for name, kinds in {**fields, **present}.items():
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if float in kinds:
            kinds = (*kinds, int)
        value = record.get(name)
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if name not in record or not ok:
            want = " or ".join(_KIND_NAMES.get(k, "null" if k is type(None) else k.__name__)
                               for k in kinds if not (k is int and float in kinds))
            got = "has no" if name not in record else f"has {str(value)[:40]!r} as its"
            raise ConfigError(f"{where} {got} '{name}' ({want} expected); {fix}")
    return record


def read_json(path: Path, expect: type | tuple = dict, what: str = "") -> object:
    """The JSON value in `path`, which must be of type `expect`."""
    path = Path(path)
    label = f"{what} {path}".strip()
    try:
        value = _decode(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {label}: {exc.strerror}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label} is not valid JSON ({str(exc)[:120]}); restore or re-create it") from exc
    if not isinstance(value, expect):
        kinds = expect if isinstance(expect, tuple) else (expect,)
        raise ConfigError(f"{label} holds a JSON {type(value).__name__}, not a "
                          f"{' or '.join(k.__name__ for k in kinds)}; restore or re-create it")
    return value


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file. A cut-short last line (a run killed mid-write) is left out
    with a warning; a malformed line elsewhere is an error naming its line number."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}); restore or re-create it") from exc
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    rows = []
    for n, (i, line) in enumerate(numbered):
        try:
            row = _decode(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if n == len(numbered) - 1 and not isinstance(exc, _TooDeep):
                log.warning("%s: line %d is cut short (a run killed while writing it?); ignoring it", path, i)
                break
            raise ConfigError(f"{path}:{i} is not a JSON object ({str(exc)[:80]}); fix or delete that line") from exc
        rows.append(row)
    return rows
