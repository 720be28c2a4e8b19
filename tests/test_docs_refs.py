"""Every pointer to a page of the documentation resolves: in the package's code and messages, the
scripts, recipes and Makefile, and the pages themselves. A pointer is a page (`README`,
`docs/foo.md`, a Markdown link `[x](foo.md)`), optionally an anchor (`docs/foo.md#bar`) and a
section named after it (`docs/foo.md, "Bar"`, `README's "Bar"`, `docs/foo.md section 4`) or
before it (`"Bar" in docs/foo.md`). The page must exist and the section be one of its headings
(or a bold paragraph lead, `**Bar.**`); an anchor must be a heading's GitHub anchor. Code that
points at the README names the section it means: the README is short and changes, and "see
README" outlives what it pointed at."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from tests.distributed import REPO

CODE = [*sorted((REPO / "megatron_kd").rglob("*.py")), *sorted((REPO / "scripts").glob("*")),
        *sorted((REPO / "bench").glob("*.py")), *sorted((REPO / "tools").glob("*.py")),
        *sorted((REPO / "recipes").rglob("*.yaml")), REPO / "Makefile", REPO / "slurm" / "train.sbatch"]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
QUOTE = r"[\"'“‘]([^\"'”’\n]{2,80}?)[\"'”’]"
PAGE_NAME = r"README(?:\.md)?|(?:\.\./)?docs/[\w/-]+\.md|[\w-]+\.md"
# a page, as a bare path or as a Markdown link's target, with an optional anchor
PAGE_REF = re.compile(r"(?:\]\((?P<link>[\w./-]+\.md)(?:#(?P<link_anchor>[\w-]+))?\)"
                      rf"|(?<![\w/.-])(?P<page>{PAGE_NAME})(?:#(?P<anchor>[\w-]+))?)")
# what names a section right after a page: 's "X" | , "X" | , section "X" | section 4
SECTION_AFTER = re.compile(rf"^(?:'s|\))?,? ?(?:section |the section )?(?:{QUOTE}|(?<=section )(\d+)\b)")
SECTION_BEFORE = re.compile(rf"{QUOTE},? (?:section )?(?:in|of) (?:the )?$")
GENERATED = re.compile(r"^docs/(study|law)/")  # report pages a command writes, not documentation
# Pointers in files of other owners that are stale today, each with the fix it needs. The test
# reports them on every run and fails once one resolves (then remove it here).
KNOWN_STALE: dict[tuple[str, str], str] = {}


def _plain(text: str) -> str:
    return re.sub(r"[`*_]", "", text).strip().rstrip(".:").strip().lower()


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@cache
def sections(page: Path) -> tuple[set[str], set[str]]:
    """A page's section names (headings and bold paragraph leads, plain lower case) and its
    headings' GitHub anchors."""
    names, anchors, fenced = set(), set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            names.add(_plain(heading.group(1)))
            slug, n = _slug(heading.group(1)), 1
            while slug in anchors:  # GitHub numbers repeated headings
                slug, n = f"{_slug(heading.group(1))}-{n}", n + 1
            anchors.add(slug)
        lead = re.match(r"(?:- )?\*\*(.+?)\*\*", line)
        if lead:
            names.add(_plain(lead.group(1)))
    return names, anchors


def _target(source: Path, name: str) -> Path:
    if name.startswith("README"):
        return REPO / "README.md"
    if name.startswith(("docs/", "../")) and source.suffix != ".md" or name.startswith("docs/"):
        return (REPO / name).resolve()
    return (source.parent / name).resolve()


def _section_found(page: Path, section: str) -> bool:
    names, _ = sections(page)
    if section.isdigit():
        return any(re.match(rf"{section}\. ", n) for n in names)
    wanted = _plain(section)
    return any(wanted in n for n in names)


def _joined(path: Path) -> str:
    """The file's text with lines joined, comment markers and string quotes at line breaks
    dropped, so that a pointer wrapped over two lines reads as one."""
    text = path.read_text(errors="replace")
    if "README" not in text and ".md" not in text:
        return ""
    text = text.replace('\\"', '"')  # a quote escaped inside a string literal
    return re.sub(r"[\"']?\s*\n\s*(?:#+ ?|\"|@echo \")?", " ", text)


def pointers(path: Path):
    """(page text, target page, anchor or None, section or None) for each pointer in a file."""
    text = _joined(path)
    for ref in PAGE_REF.finditer(text):
        name = ref.group("link") or ref.group("page")
        if name.endswith(".md") and not ref.group("link") and "/" not in name and path.suffix != ".md":
            continue  # a bare "report.md" in code is an output file's name, not a page
        after = SECTION_AFTER.match(text[ref.end():ref.end() + 100])
        before = SECTION_BEFORE.search(text[max(0, ref.start() - 100):ref.start()])
        section = (after and (after.group(1) or after.group(2))) or (before and before.group(1))
        yield name, _target(path, name), ref.group("link_anchor") or ref.group("anchor"), section


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name


def _problem(source: Path, name: str, page: Path, anchor: str | None, section: str | None):
    """What is wrong with one pointer, or None."""
    if not page.exists():
        return f"points at {name}, which does not exist"
    if anchor and anchor not in sections(page)[1]:
        return f"points at {name}#{anchor}: no heading of {_rel(page)} has that anchor"
    if section and not _section_found(page, section):
        return f"points at {_rel(page)}, section {section!r}: no such heading"
    if source.suffix != ".md" and page.name == "README.md" and page.parent == REPO and not section:
        return "points at the README without naming its section"
    return None


def _problems(files) -> list[tuple[str, str, str]]:
    found = []
    for path in files:
        for name, page, anchor, section in pointers(path):
            if GENERATED.match(_rel(page)) or page.suffix != ".md":
                continue
            what = _problem(path, name, page, anchor, section)
            if what:
                found.append((_rel(path), name, what))
    return found


def _check(files):
    problems = _problems(files)
    stale = [f"{rel}: {what}" for rel, name, what in problems if (rel, name) not in KNOWN_STALE]
    assert not stale, "pointers to the documentation that do not resolve:\n  " + "\n  ".join(stale)
    return {(rel, name) for rel, name, _ in problems}


def test_code_points_at_pages_and_sections_that_exist():
    still = _check(f for f in CODE if f.is_file())
    for key, fix in KNOWN_STALE.items():
        print(f"known stale pointer in {key[0]} (owner's fix: {fix})")
    fixed = [key for key in KNOWN_STALE if key not in still]
    assert not fixed, f"these pointers resolve now: remove them from KNOWN_STALE: {fixed}"


def test_pages_point_at_pages_and_sections_that_exist():
    _check(PAGES)


def test_the_checker_finds_stale_pointers(tmp_path):
    """A pointer at a missing page, anchor or section, and a bare README pointer, each fail;
    sections named after or before a page are found."""
    sample = tmp_path / "sample.py"
    sample.write_text('"""See docs/nope.md, docs/data.md#no-such-anchor and the README\'s "No such part".\n'
                      '(docs/reliability.md, "Checked during a run") and "Checked during a run" in\n'
                      '# docs/reliability.md are fine, as is docs/PERFORMANCE.md section 4; see the\n'
                      'README for more."""\n')
    found = [what for _, _, what in _problems([sample])]
    assert found == ["points at docs/nope.md, which does not exist",
                     "points at docs/data.md#no-such-anchor: no heading of docs/data.md has that anchor",
                     "points at README.md, section 'No such part': no such heading",
                     "points at the README without naming its section"], found
