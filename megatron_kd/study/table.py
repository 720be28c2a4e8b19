"""The results table `mkd report --table` reads and every sweep report writes (report.csv): one
row per run, so results from another framework or a paper's tables read with the same
statistics. Columns (docs/report.md, "The results table"):

  run, student, student_params, student_tokens, teacher (empty: a baseline), teacher_params,
  teacher_tokens, alpha, alpha_schedule (empty unless scheduled), seed, data_seed,
  val/<set> per validation set, teacher_val/<set> per set (the teacher's own loss),
  and optional: flops (the student's training FLOPs), teacher_pretrain_flops,
  teacher_pass_flops (its forward pass over this run's tokens, as if for this run alone),
  teacher_pass_shared_by (runs that share one pass, e.g. of a teacher cache; default 1; fractional
  when the readers have several lengths: this run's own pass over its share of the one made),
  temperature, kind, top_k, teacher_model, student_nonembedding_params and
  teacher_nonembedding_params (what `mkd fit` counts as N). Missing FLOPs are estimated as 6·N·D (training)
  and 2·N·D (forward), and the report says so. A kd.auto run (α set by the run) has `auto` as its
  alpha and its ceiling (kd.alpha) in an auto_ceiling column (default 1), which a table without
  such runs does not have.

Cells are checked where they enter, one line naming row and column: numbers finite and at most
1e30 (whole where they count, not negative where they are sizes) and in the range `mkd fit` holds
a run to (law.ROW_BOUNDS: a student of >= 1 parameter, a temperature in (0, 1e6], seeds in
[0, 2^32), ...); a JSON file (report.json) is named as not a table; a loss above 0 and at most 1e6
nats/token, `nan` for a diverged run (left out of the statistics, as in a sweep), empty for none.
A header naming a column twice, a row with more cells than the header, two rows of one run are
refused; a UTF-8 byte-order mark is read as one. Names that start like a spreadsheet formula are
written behind a quote (FORMULA_START) and read back without it.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.study.law import ROW_BOUNDS, checked_number
from megatron_kd.study.rows import RunRow, frozen_losses

REQUIRED = ["run", "student", "student_params", "student_tokens", "teacher", "teacher_params", "teacher_tokens",
            "alpha", "alpha_schedule", "seed", "data_seed"]
OPTIONAL = ["flops", "teacher_pretrain_flops", "teacher_pass_flops", "teacher_pass_shared_by", "temperature",
            "kind", "top_k", "teacher_model", "student_nonembedding_params", "teacher_nonembedding_params"]
_NUMBERS = {"student_params": float, "student_tokens": int, "teacher_params": float, "teacher_tokens": int,
            "alpha": float, "seed": int, "data_seed": int, "flops": float, "teacher_pretrain_flops": float,
            "teacher_pass_flops": float, "teacher_pass_shared_by": float, "temperature": float, "top_k": int,
            "student_nonembedding_params": float, "teacher_nonembedding_params": float}
# the report's row fields each column fills
_FIELD = {"run": "name", "flops": "student_flops"}
_NON_NEGATIVE = {"student_params", "student_tokens", "teacher_params", "teacher_tokens", "flops",
                 "teacher_pretrain_flops", "teacher_pass_flops", "teacher_pass_shared_by", "top_k",
                 "student_nonembedding_params", "teacher_nonembedding_params"}
AUTO = "auto"  # the alpha cell of a kd.auto run
AUTO_COLUMN = "auto_ceiling"  # its kd.alpha; a column only where some run is one (older tables stay as they were)
_LARGEST = 1e30  # no count or FLOPs is near it, and products of two stay finite
_LARGEST_LOSS = 1e6  # nats/token: a loss of 10^308 is not a measurement (and overflows the statistics)
TEXT = ("run", "student", "teacher", "alpha_schedule", "kind", "teacher_model")
# A text cell a spreadsheet would run as a formula (OWASP "CSV injection") is written behind a
# single quote, which spreadsheets show but do not evaluate; read_table takes exactly that quote
# off again, so every name round-trips (a name that itself starts with quotes before a formula
# character gets one more, which is taken off in turn).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(text: str) -> str:
    """`text` as a CSV cell no spreadsheet evaluates: a quote before a formula character."""
    return "'" + text if text.lstrip("'").startswith(FORMULA_START) else text


def unneutralise(cell: str) -> str:
    """The inverse of neutralise (a cell it did not change is returned as it is)."""
    return cell[1:] if cell.startswith("'") and cell[1:].lstrip("'").startswith(FORMULA_START) else cell


def _cell(v, loss: bool = False) -> str:
    if hasattr(v, "item"):  # a numpy scalar
        v = v.item()
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if loss else ""  # a diverged run's loss reads back as one (_loss)
    if isinstance(v, str):
        return neutralise(v)
    return repr(v) if isinstance(v, float) else str(v)


def write_table(path: Path, rows: list[RunRow], sets: list[str]) -> None:
    """The report's rows as the table: floats at full precision (a table read back gives the
    same report), names neutralised against spreadsheet formulas (FORMULA_START)."""
    auto = [AUTO_COLUMN] if any(r.is_auto for r in rows) else []
    head = REQUIRED + [f"val/{s}" for s in sets] + [f"teacher_val/{s}" for s in sets] + OPTIONAL + auto
    out = []
    for r in sorted(rows, key=lambda r: (r.student, str(r.teacher), r.name)):
        line = {c: _cell(getattr(r, _FIELD.get(c, c))) for c in REQUIRED + OPTIONAL + auto}
        if r.is_auto:
            line["alpha"] = AUTO
        if not r.teacher:
            line["teacher"] = ""
        for s in sets:
            line[f"val/{s}"] = _cell(r.val.get(s), loss=True)
            line[f"teacher_val/{s}"] = _cell(r.teacher_val.get(s), loss=True)
        out.append(line)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=head)
    w.writeheader()
    w.writerows(out)
    write_text_atomic(path, buf.getvalue())


def _number(col: str, raw: str, where: str, fix: str):
    """A parameter cell as its number: finite, |x| <= 1e30, whole where the column counts."""
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{where} column {col}: {raw[:40]!r} is not a number; {fix}") from None
    if not math.isfinite(v) or abs(v) > _LARGEST:
        raise ConfigError(f"{where} column {col}: {raw[:40]!r} is not a finite number of at most "
                          f"{_LARGEST:g}; {fix}")
    if col in _NON_NEGATIVE and v < 0:
        raise ConfigError(f"{where} column {col}: {raw[:40]!r} is negative; {fix}")
    if _NUMBERS[col] is int:
        if v != int(v):
            raise ConfigError(f"{where} column {col}: {raw[:40]!r} is not a whole number; {fix}")
        return int(v)
    return v


def _loss(col: str, raw: str, where: str, fix: str) -> float:
    """A loss cell: a number in (0, 1e6] nats/token, or `nan` for a diverged run (as the report
    writes one: left out of the statistics and plots, and named)."""
    if raw.lower() == "nan":
        return math.nan
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{where} column {col}: {raw[:40]!r} is not a number; {fix}") from None
    if not 0 < v <= _LARGEST_LOSS:  # also refuses inf and nan spelled otherwise
        raise ConfigError(f"{where} column {col}: {raw[:40]!r} is not a loss in nats/token (above 0, at "
                          f"most {_LARGEST_LOSS:g}; `nan` for a diverged run, empty for none); {fix}")
    return v


def _read_lines(path: Path, fix: str) -> tuple[list[str], list[dict]]:
    """(header, lines) of a CSV file, a UTF-8 byte-order mark read as one; a header that names
    a column twice or a line with more cells than the header is refused."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            if f.read(4096).lstrip()[:1] in ("{", "["):  # report.json, law.json: not a table
                raise ConfigError(f"{path}: JSON (it starts with {{ or [), not a CSV results table; give the "
                                  "report's report.csv (or another CSV: `mkd report --help` lists its columns)")
            f.seek(0)
            reader = csv.DictReader(f)
            head = list(reader.fieldnames or [])
            lines = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: not a readable CSV table ({exc}); {fix}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the table ({exc.strerror or exc}); give a CSV file") from exc
    twice = sorted({c for c in head if head.count(c) > 1})
    if twice:
        raise ConfigError(f"{path}: column(s) {', '.join(twice)[:200]} appear more than once in the header; "
                          "keep one of each")
    for i, line in enumerate(lines, start=2):
        if None in line:  # csv.DictReader files extra cells under None
            raise ConfigError(f"{path} row {i}: {len(head) + len(line[None])} cells, the header has "
                              f"{len(head)}; {fix}")
    return head, lines


def read_table(path: Path) -> tuple[list[RunRow], list[str]]:
    """(rows as the report reads them, validation sets) from a results table; a bad table is one
    line naming the row and column."""
    path = Path(path)
    fix = "fix the table (columns: `mkd report --help`)"
    head, lines = _read_lines(path, fix)
    missing = [c for c in REQUIRED if c not in head]
    sets = [c[4:] for c in head if c.startswith("val/") and c[4:]]
    if missing or not sets:
        what = f"missing column(s) {', '.join(missing)}" if missing else "no val/<set> column"
        raise ConfigError(f"{path}: {what}; {fix}")
    unknown = [c for c in head if c not in REQUIRED + OPTIONAL + [AUTO_COLUMN]
               and not c.startswith(("val/", "teacher_val/"))]
    if unknown:
        raise ConfigError(f"{path}: unknown column(s) {', '.join(unknown)[:200]}; {fix}")
    rows, seen = [], {}
    for i, line in enumerate(lines, start=2):  # line 1 is the header
        name = unneutralise((line.get("run") or "").strip())
        where = f"{path} row {i}" + (f" (run {name[:60]!r})" if name else "")
        if not name:
            raise ConfigError(f"{where} column run: empty; every row names its run")
        if name in seen:
            raise ConfigError(f"{where} column run: {name[:60]!r} repeats row {seen[name]}; one row per run")
        seen[name] = i
        rows.append(_row(line, name, sets, where, fix))
    if not rows:
        raise ConfigError(f"{path}: no rows; {fix}")
    return rows, sets


def _row(line: dict, name: str, sets: list[str], where: str, fix: str) -> RunRow:
    r = {"name": name, "student": unneutralise((line.get("student") or "").strip()), "val": {}, "teacher_val": {}}
    if not r["student"]:
        raise ConfigError(f"{where} column student: empty; {fix}")
    for col in REQUIRED[2:] + OPTIONAL:
        raw = (line.get(col) or "").strip()
        if col == "alpha" and raw == AUTO:
            r["auto_ceiling"] = _auto_ceiling((line.get(AUTO_COLUMN) or "").strip(), where, fix)
        elif col in _NUMBERS and raw:
            field = _FIELD.get(col, col)
            r[field] = _number(col, raw, where, fix)
            if field in ROW_BOUNDS:  # the range `mkd fit` holds it to (a temperature of 1e29 is no run's)
                checked_number(r[field], f"{where} column {col}", fix, *ROW_BOUNDS[field])
        elif col not in _NUMBERS:
            r[col] = unneutralise(raw) or None
    for s in sets:
        for prefix, into in (("val/", "val"), ("teacher_val/", "teacher_val")):
            raw = (line.get(prefix + s) or "").strip()
            if raw:
                r[into][s] = _loss(prefix + s, raw, where, fix)
    if not r["val"]:
        raise ConfigError(f"{where}: no val/<set> loss; {fix}")
    auto = r.get("auto_ceiling") is not None
    if (line.get(AUTO_COLUMN) or "").strip() and not auto:
        raise ConfigError(f"{where} column {AUTO_COLUMN}: given for a run whose alpha is not `{AUTO}`; leave it "
                          "empty, or write `auto` in its alpha column")
    if not r.get("teacher"):
        if auto:
            raise ConfigError(f"{where} column alpha: `{AUTO}` for a baseline (no teacher); give 0 or empty")
        r["teacher"] = None
    elif r.get("alpha") is None and not r.get("alpha_schedule") and not auto:
        raise ConfigError(f"{where} column alpha: empty for a KD run; give α, `{AUTO}` (kd.auto) or an "
                          "alpha_schedule label")
    elif auto and r.get("alpha_schedule"):
        raise ConfigError(f"{where} column alpha_schedule: given for a kd.auto run (alpha `{AUTO}`); leave it empty")
    return RunRow(**{**r, "val": frozen_losses(r["val"]), "teacher_val": frozen_losses(r["teacher_val"])})


def _auto_ceiling(raw: str, where: str, fix: str) -> float:
    """A kd.auto run's ceiling (its kd.alpha): a number in (0, 1], 1 when the cell is empty."""
    if not raw:
        return 1.0
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not 0 < v <= 1:
        raise ConfigError(f"{where} column {AUTO_COLUMN}: {raw[:40]!r} is not a number in (0, 1] (kd.alpha of a "
                          f"kd.auto run); {fix}")
    return v
