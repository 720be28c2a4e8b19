"""docs/architecture.md's module list is the package: every megatron_kd/**/*.py (an `__init__.py`
aside) is named there exactly once, under its package's heading, and nothing named there is gone.
A new module fails this test with the line to add and where."""

from __future__ import annotations

import re

from tests.distributed import REPO

PAGE = REPO / "docs" / "architecture.md"
PACKAGE = REPO / "megatron_kd"
SECTION = "## Modules"
PACKAGE_HEADING = re.compile(r"^### `megatron_kd/(?:([a-z_]+)/)?`$")
MODULE_LINE = re.compile(r"^- `([A-Za-z0-9_]+\.py)`: \S")


def package_modules() -> set[str]:
    """Every module of the package as a path relative to megatron_kd/ (`distill/cache.py`)."""
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def listed_modules(text: str) -> tuple[list[str], list[str]]:
    """The modules the page's Modules section names, in order, and its lines that look like a
    module entry but are not one (a bullet outside a package heading, or without its `: what`)."""
    names, malformed = [], []
    in_section, package = False, None
    for line in text.splitlines():
        if line.startswith("## "):
            in_section = line.strip() == SECTION
            package = None
            continue
        if not in_section:
            continue
        heading = PACKAGE_HEADING.match(line.strip())
        if heading:
            package = heading.group(1) or ""
            continue
        if line.startswith("- `"):
            entry = MODULE_LINE.match(line)
            if entry is None or package is None:
                malformed.append(line)
                continue
            names.append(f"{package}/{entry.group(1)}" if package else entry.group(1))
    return names, malformed


def _add_instruction(module: str) -> str:
    package, _, name = module.rpartition("/")
    heading = f"### `megatron_kd/{package}/`" if package else "### `megatron_kd/`"
    return f"  add megatron_kd/{module}: a line \"- `{name}`: <what it owns>\" under \"{heading}\""


def test_module_list_matches_the_package():
    names, malformed = listed_modules(PAGE.read_text())
    actual = package_modules()
    problems = [_add_instruction(m) for m in sorted(actual - set(names))]
    problems += [f"  remove megatron_kd/{m}: no such module" for m in sorted(set(names) - actual)]
    problems += [f"  megatron_kd/{m} is listed {names.count(m)} times: keep one line"
                 for m in sorted(set(names)) if names.count(m) > 1]
    problems += [f"  not a module line (\"- `name.py`: what it owns\" under a package heading): {line}"
                 for line in malformed]
    assert not problems, ("docs/architecture.md, section \"Modules\", differs from megatron_kd/:\n"
                          + "\n".join(problems))


def test_every_package_has_its_heading():
    text = PAGE.read_text()
    packages = sorted({m.rpartition("/")[0] for m in package_modules()} - {""})
    missing = [p for p in packages if f"### `megatron_kd/{p}/`" not in text]
    assert not missing, f"docs/architecture.md: add a heading ### `megatron_kd/<pkg>/` for {missing}"
