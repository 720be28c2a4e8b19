"""The README and the docs/ pages stay true to the repository: every relative link names a file
that exists, and every `mkd ...` command quoted in a shell block parses with the CLI's own
argument parser (commands, flags and their values as the user would type them). That each one
also runs, in the state the page puts the user in, is tests/test_docs_commands.py's."""

from __future__ import annotations

import functools
import re
import shlex

import pytest

from tests.distributed import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _shell_lines(text: str):
    """Lines of ```bash blocks, continuations joined, comments dropped."""
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("mkd ") or " mkd " in f" {line}":
                yield line[line.index("mkd "):] if not line.startswith("mkd ") else line


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    missing = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{page.name}: links to missing files: {missing}"


def test_quoted_mkd_commands_parse(monkeypatch):
    from megatron_kd.cli import main

    # One parser for every line (parse() builds a fresh one per call: 45 ms each, most of the test).
    monkeypatch.setattr(main, "build_parser", functools.cache(main.build_parser))
    parse = main.parse

    bad, seen = [], 0
    for page in PAGES:
        for line in _shell_lines(page.read_text()):
            words = shlex.split(line.replace("[", "").replace("]", ""))[1:]
            words = words[:words.index("|")] if "|" in words else words  # what a pipe feeds on
            words = [w for w in words if w != "..."]
            seen += 1
            try:
                parse(words)
            except (SystemExit, Exception) as exc:  # the parser's one-line error
                bad.append(f"{page.name}: {line}  ({exc})")
    assert seen >= 25, f"only {seen} quoted mkd commands found: is the block syntax still ```bash?"
    assert not bad, "quoted commands that do not parse:\n  " + "\n  ".join(bad)


def test_readme_first_screen_says_what_is_not_verified():
    """The README's first screen names what has not been verified: no GPU run, and the pinned
    megatron-core (requirements.txt's pin) installed on a Python it does not declare."""
    pin = re.search(r"^megatron-core==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)
    first_screen = " ".join((REPO / "README.md").read_text().splitlines()[:25])
    for phrase in ("Not verified yet", "nothing has run on a GPU", f"pinned to {pin}",
                   "Python 3.11", "--ignore-requires-python"):
        assert phrase in first_screen, f"README's first 25 lines no longer say {phrase!r}"
