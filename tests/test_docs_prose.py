"""The README and docs/*.md speak of the product: no words about how it is developed (sessions,
issues, review rounds, time allowances), and provenance (a commit, a date) only in a section
whose heading says it holds results ("What it measured", "Measured times", "Where and when"),
never in running prose."""

from __future__ import annotations

import re

import pytest

from tests.test_docs import PAGES

# Phrases that speak of the project's process rather than the product (case-insensitive).
PROCESS_WORDS = [
    r"\bsessions?\b", r"\bissue #?\d+", r"\bthe issue\b", r"\bissue's\b", r"\bissue [\"“]",
    r"\b(?:review|first|second|third|fourth|fifth|next|last|previous|earlier|this) round(?:s|'s)?\b",
    r"\breview round", r"\bafter a review\b", r"\ba review of\b", r"\breview mends\b",
    r"\bhostile re-?check", r"\bmaintainers?\b", r"\breviewers?\b", r"\bhelper (?:session|agent)s?\b",
    r"\blent\b", r"\b\d+ minutes? allowed\b", r"\binside the \d+ (?:allowed|minutes)\b",
    r"\bsharing the (?:two|2) cores\b", r"\btest runs? of that\b", r"\ba test module ran\b",
    r"\bthis project's\b", r"\bdeadline\b",
]
PROCESS = re.compile("|".join(PROCESS_WORDS), re.I)
# A commit (7 to 40 hex digits with a digit and a letter) or an ISO date.
PROVENANCE = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b|\b20\d\d-\d\d-\d\d\b")
RESULTS_HEADING = re.compile(r"measured|where and when|results|pre-registered", re.I)
# docs/STUDY.md is another page's owner's: these lines are reported on every run until mended
# (not failed: its owner may be rewriting them; a line no longer there is reported as mended).
KNOWN: dict[str, list[str]] = {"STUDY.md": []}


def findings(text: str) -> list[tuple[int, str, str]]:
    """(line number, line, what is wrong) for each line that speaks of the process or carries a
    commit or date outside a results section. Shell blocks are commands, not prose."""
    out, in_results, fenced = [], False, False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        heading = re.match(r"#{1,6} ", line)
        if heading:
            in_results = bool(RESULTS_HEADING.search(line))
        word = PROCESS.search(line)
        if word:
            out.append((number, line, f"speaks of the process ({word.group(0)!r})"))
        elif PROVENANCE.search(line) and not in_results:
            out.append((number, line, f"provenance ({PROVENANCE.search(line).group(0)}) outside a "
                                      "results section: move it into the page's \"What it measured\" "
                                      "or \"Where and when\" section"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_speak_of_the_product(page):
    known = KNOWN.get(page.name, [])
    found = findings(page.read_text())
    new = [f"{page.name}:{n}: {what}: {line.strip()}" for n, line, what in found
           if line.strip() not in known]
    assert not new, "\n".join(new)
    still = {line.strip() for _, line, _ in found}
    for line in known:  # reported, not failed: the page's owner may be rewriting these lines
        state = f"known, for {page.name}'s owner to mend" if line in still else "mended, remove from KNOWN"
        print(f"{state}: {line}")


def test_the_check_finds_process_words_and_stray_provenance():
    text = ("# Page\n\nThis was measured in the third round's run.\nNo GPU lent to it.\n"
            "A result of 2026-12-07 in prose.\n```bash\nmkd fit 2026-12-07\n```\n"
            "## What it measured\n\nOn a fresh clone of 74f169b (2026-12-07): fine here.\n")
    assert [n for n, _, _ in findings(text)] == [3, 4, 5]


# A run's duration (minutes or hours) is quoted in one place, PERFORMANCE.md's "Measured times"
# table; elsewhere a page links to it. Lines of other owners' files that still quote one:
DURATION = re.compile(r"\b\d+(?:[.,]\d+)? ?(?:min|minutes?|hours?|h)\b|\bminutes? (?:on|for)\b", re.I)
DURATION_KNOWN: dict[str, list[str]] = {
    "docs/STUDY.md": [
        'teachers ≈ 3 min, 5 cache passes ≈ 3 min, 112 student runs ≈ 65 min, evaluations and the report',
        '≈ 2 min: about 75 minutes after the corpus. `make study` runs it',
        'run, two runs at a time): teachers ~14 min, caches ~5 min, 64 student runs ~60 min, frontier',
        '~6 min: about 85 minutes.',
        'at a time: **67 min 58 s**, install included (corpus and teachers 7.9 min, short sweep 28.9 min',
        'with its 5 caches, long sweep 29.2 min with its 3, reports 14 s; for about a minute of the',
        'ca148ce) took 98 min 18 s: its unigram control runs took the online route to the top-64',
        'at a time: **4,764 s (79 min)** after the install — the teacher zoo 213 s, the nine cache passes',
        '11 min, the 111 student runs 64 min, the teacher evaluations and the report 1 min. Re-running it',
    ],
}


def quoted_durations(path) -> list[str]:
    """The lines of a page (outside shell blocks) or of the Makefile's help that quote a duration."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and DURATION.search(line) and (path.suffix == ".md" or "@echo" in line):
            lines.append(line.strip())
    return lines


def test_measured_times_live_in_one_table():
    from tests.distributed import REPO

    new = []
    for path in [*PAGES, REPO / "Makefile"]:
        rel = path.relative_to(REPO).as_posix()
        if rel == "docs/PERFORMANCE.md":
            continue
        found, known = quoted_durations(path), DURATION_KNOWN.get(rel, [])
        new += [f"{rel}: {line}" for line in found if line not in known]
        for line in known:  # reported, not failed: the file's owner may be rewriting these lines
            state = "known, for its owner: link docs/PERFORMANCE.md#measured-times instead" if line in found \
                else "mended, remove from DURATION_KNOWN"
            print(f"{rel}: {state}: {line}")
    assert not new, ("durations quoted outside docs/PERFORMANCE.md's \"Measured times\" table (put the "
                     "number there and link to it):\n  " + "\n  ".join(new))
