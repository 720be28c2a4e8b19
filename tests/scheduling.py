"""The suite's order under pytest-xdist: the longest test modules first.

`make test` runs `-n 2 --dist loadscope`: each module goes whole to one worker (its module
fixtures are built once; the teachers and the text corpus of tests/conftest.py once per
session, by whichever worker asks first while the other waits: tests/helpers.py build_once).
xdist's default queues modules by their number of tests, so a module of one two-minute
end-to-end test could start last and run alone while the other worker idles. Queued longest
first instead (LPT scheduling), the two workers end close together. A module's cost is what
`tests/module_seconds.json` measured (the call, setup and teardown seconds of its tests on a
fresh clone here); a module not in it is costed by its tests' markers. The table only orders
the suite: a stale one costs balance, never a test.

Refresh it: `MKD_RECORD_MODULE_SECONDS=tests/module_seconds.json make test`.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

TABLE = Path(__file__).with_name("module_seconds.json")
RECORD_ENV = "MKD_RECORD_MODULE_SECONDS"
# a module missing from the table: seconds per test by its markers (the measured medians, roughly)
MARKER_SECONDS = {"slurm": 30.0, "slow": 20.0, "multiproc": 10.0}
PLAIN_SECONDS = 0.3


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _load_table() -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(TABLE.read_text()).get("modules", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def estimated_seconds(items) -> dict[str, float]:
    """Each module's cost: the table's, else the sum of its tests' marker estimates."""
    table = _load_table()
    guess: dict[str, float] = defaultdict(float)
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        guess[module_of(item.nodeid)] += max((s for m, s in MARKER_SECONDS.items() if m in marks),
                                             default=PLAIN_SECONDS)
    return {mod: table.get(mod, est) for mod, est in guess.items()}


def longest_modules_first(items) -> None:
    """Reorder the collected items in place: modules by cost, descending (ties: collection
    order); a module's own tests keep their order. Deterministic, so every xdist worker collects
    the same sequence."""
    cost = estimated_seconds(items)
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        first_seen.setdefault(module_of(item.nodeid), i)
    items.sort(key=lambda it: (-cost[module_of(it.nodeid)], first_seen[module_of(it.nodeid)]))


class ModuleSeconds:
    """Sums each module's reported setup, call and teardown seconds (on the controller under
    xdist, which receives every worker's reports) and writes them where RECORD_ENV says."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report) -> None:
        self.seconds[module_of(report.nodeid)] += report.duration

    def pytest_sessionfinish(self, session) -> None:
        if hasattr(session.config, "workerinput"):  # an xdist worker: the controller writes
            return
        modules = {k: round(v, 1) for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])}
        self.out.write_text(json.dumps({"about": "seconds per test module (setup + call + teardown), "
                                                 "measured by tests/scheduling.py; orders the suite only",
                                        "modules": modules}, indent=1) + "\n")


def register(config) -> None:
    out = os.environ.get(RECORD_ENV)
    if out and not hasattr(config, "workerinput"):
        config.pluginmanager.register(ModuleSeconds(out), "mkd-module-seconds")
