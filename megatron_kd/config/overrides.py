"""Overrides the package writes for itself (a sweep's points, `mkd advise --write-recipes`, a
cache job's recipe): `key=value` text whose value reads back as exactly the value given.

A user's override is YAML (`train.steps=20`, `data.valid={a: x}`), so a path or a name pasted
into one raw can change meaning: ` #` starts a comment (`…/teacher #2` would read as
`…/teacher`), `: ` makes a mapping, a leading `-`, `[`, `{`, `&`, `*`, `!` or quote makes a
list, an anchor, a tag or a quoted string, and `1e-06` is a string to YAML 1.1. Every value
written here is a YAML flow scalar or collection in its exact form: strings double-quoted with
every special character escaped (JSON's string syntax is a subset of YAML's double-quoted one),
floats with a decimal point, mappings and lists in flow style."""

from __future__ import annotations

import json
import math
import os
from typing import Any


def yaml_value(value: Any) -> str:
    """`value` as YAML flow text that the recipe loader reads back as the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(os.fspath(value), ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_value(str(k))}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    raise TypeError(f"no YAML form for {type(value).__name__}")


def _float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if "." not in mantissa:  # YAML 1.1 reads 1e-06 as a string: it wants 1.0e-06
        mantissa += ".0"
    if e and exponent[0] not in "+-":
        exponent = "+" + exponent
    return mantissa + (f"e{exponent}" if e else "")


def override(key: str, value: Any) -> str:
    """`key=value` for the recipe loader, the value exactly as given (see the module's doc)."""
    return f"{key}={yaml_value(value)}"
