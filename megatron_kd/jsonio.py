"""Reading the JSON and JSONL files runs leave behind (metrics, sweep points, states, HF configs)
with one-line errors naming the file and what is wrong, instead of a decoder traceback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from megatron_kd.errors import ConfigError

log = logging.getLogger("megatron_kd")


def read_json(path: Path, expect: type | tuple = dict, what: str = "") -> object:
    """The JSON value in `path`, which must be of type `expect`."""
    path = Path(path)
    label = f"{what} {path}".strip()
    try:
        value = json.loads(path.read_text())
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
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if n == len(numbered) - 1:
                log.warning("%s: line %d is cut short (a run killed while writing it?); ignoring it", path, i)
                break
            raise ConfigError(f"{path}:{i} is not a JSON object ({str(exc)[:80]}); fix or delete that line") from exc
        rows.append(row)
    return rows
