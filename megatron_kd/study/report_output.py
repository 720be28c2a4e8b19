"""What `mkd report` writes, made safe against what it reads: run, student, teacher and set
names come from a hand-written table or sweep, so they are escaped in report.md (no raw HTML,
no line breaks, no Markdown syntax), drawn as plain text in the figures (no mathtext: a `$` in
a name is a dollar sign), and never allowed to write over an input or over a file the report
did not write itself (a manifest, .mkd-report.json, records what it wrote and its hash)."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic

TEXT_FILES = ("report.md", "report.json", "report.csv")
FIGURES = ("gain_vs_teacher.png", "loss_curves.png", "gain_vs_teacher_tokens.png", "best_alpha_vs_teacher.png",
           "loss_vs_compute.png")
MANIFEST = ".mkd-report.json"
FIGURE_SETS = 6  # validation sets drawn (one panel each): a figure 152 panels wide takes minutes to lay out

_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")  # control characters, line breaks among them
_MARKDOWN = re.compile(r"([\\`*\[\]{}#|~$!])")  # inline syntax: emphasis, links, code, tables, math
# underscores emphasise only at a word's edge (CommonMark): snake_case names stay as typed
_EDGE_UNDERSCORES = re.compile(r"(?<![0-9A-Za-z_])_+|_+(?![0-9A-Za-z_])")
# a list item, quote or rule where the text starts a line ("- " + a name opens an item's line)
_LINE_START = re.compile(r"^(\s*)(-|>|\+(?=\s|$))|^(\s*\d+)([.)])(?=\s|$)")


def md_text(value) -> str:
    """`value` as Markdown text that renders as itself on one line: control characters and line
    breaks become spaces, `<` `>` `&` become entities (no raw HTML), Markdown syntax characters
    are backslash-escaped, and a leading list or quote marker is escaped."""
    text = _LINE_BREAKS.sub(" ", str(value))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MARKDOWN.sub(r"\\\1", text)
    text = _EDGE_UNDERSCORES.sub(lambda m: m[0].replace("_", "\\_"), text)
    return _LINE_START.sub(lambda m: f"{m[1] or m[3] or ''}\\{m[2] or m[4]}", text)


def figure_text(value) -> str:
    """`value` as a figure label: control characters and line breaks as spaces (no font draws
    them), the rest as typed (the figures draw with mathtext off: plain_text_figures)."""
    return _LINE_BREAKS.sub(" ", str(value))


def figure_sets(sets: list[str], id_set: str) -> list[str]:
    """The sets the figures draw: the in-domain set, then the others in the table's order, up to
    FIGURE_SETS (the tables and report.json hold every set)."""
    return ([id_set] + [s for s in sets if s != id_set])[:FIGURE_SETS]


def plain_text_figures(draw):
    """Decorate a figure-drawing function: every label it makes is plain text (mathtext and TeX
    off), so a `$` in a run or set name is drawn as typed instead of failing to parse."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        matplotlib.use("Agg")
        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return draw(*args, **kwargs)

    return wrapper


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(out_dir: Path) -> dict | None:
    try:
        files = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    return files if isinstance(files, dict) else None


def _report_title(path: Path) -> bool:
    """Whether `path` starts as a report.md of `mkd report` does (from before the manifest)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(("# Report: ", "# Sweep report: "))
    except (OSError, UnicodeDecodeError):
        return False


def check_outputs(out_dir: Path, inputs: list[Path], overwrite: bool, elsewhere: str = "") -> None:
    """Refuse, before anything is written, to write over an input (never allowed) or over a file
    of the report's names that the report did not write (or that changed since), unless
    `overwrite`. A directory whose report predates the manifest (a sweep directory, or a
    report.md under the report's own title) holds the report's own files.
    `elsewhere` names the option that writes the report somewhere else (--out), if any."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file, not a directory; {elsewhere or 'give a directory'}")
    written = _manifest(out_dir)
    legacy = written is None and ((out_dir / "points.json").is_file() or _report_title(out_dir / "report.md"))
    for name in TEXT_FILES + FIGURES + (MANIFEST,):
        path = out_dir / name
        if not path.exists():
            continue
        for source in inputs:
            if source.exists() and path.samefile(source):
                raise ConfigError(f"the report would write {path} over its input {source}; "
                                  f"{elsewhere or 'move the input away'}")
        if overwrite or legacy or name == MANIFEST:
            continue
        if written is None or written.get(name) != _sha256(path):
            raise ConfigError(f"{path} exists and was not written by `mkd report` (or was changed since); "
                              f"move it away{', ' + elsewhere if elsewhere else ''} or pass --overwrite to "
                              "replace it")


def record_outputs(out_dir: Path, paths: list[Path]) -> None:
    """Write the manifest of what this report wrote (so that a re-run may replace exactly that)."""
    files = {p.name: _sha256(p) for p in paths if p.is_file()}
    write_text_atomic(Path(out_dir) / MANIFEST, json.dumps({"written_by": "mkd report", "files": files}, indent=1))
