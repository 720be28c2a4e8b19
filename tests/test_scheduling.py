"""The suite's order (tests/scheduling.py): modules longest first by the measured table, else by
their markers; a module's tests keep their order; the recorder sums a module's phases."""

import json
from types import SimpleNamespace

from tests import scheduling


class _Item:
    def __init__(self, nodeid, *marks):
        self.nodeid, self._marks = nodeid, [SimpleNamespace(name=m) for m in marks]

    def iter_markers(self):
        return iter(self._marks)


def test_longest_modules_first_by_table_then_markers(monkeypatch, tmp_path):
    table = tmp_path / "module_seconds.json"
    table.write_text(json.dumps({"modules": {"tests/a.py": 5.0, "tests/c.py": 100.0}}))
    monkeypatch.setattr(scheduling, "TABLE", table)
    items = [_Item("tests/a.py::t1"), _Item("tests/b.py::t1", "slow"), _Item("tests/a.py::t2"),
             _Item("tests/b.py::t2", "slurm"), _Item("tests/c.py::t1"), _Item("tests/d.py::t1")]
    scheduling.longest_modules_first(items)
    # c: 100 (table); b: 20 + 30 (markers); a: 5 (table); d: 0.3 (a plain test)
    assert [i.nodeid for i in items] == ["tests/c.py::t1", "tests/b.py::t1", "tests/b.py::t2",
                                         "tests/a.py::t1", "tests/a.py::t2", "tests/d.py::t1"]
    table.write_text("not json")  # a damaged table orders by markers alone, never fails the suite
    assert scheduling.estimated_seconds(items)["tests/c.py"] == scheduling.PLAIN_SECONDS


def test_recorder_sums_each_modules_phases(tmp_path):
    rec = scheduling.ModuleSeconds(str(tmp_path / "out.json"))
    for nodeid, d in (("tests/a.py::t1", 1.0), ("tests/a.py::t1", 0.5), ("tests/b.py::t", 3.0)):
        rec.pytest_runtest_logreport(SimpleNamespace(nodeid=nodeid, duration=d))
    rec.pytest_sessionfinish(SimpleNamespace(config=SimpleNamespace()))
    assert json.loads((tmp_path / "out.json").read_text())["modules"] == {"tests/b.py": 3.0, "tests/a.py": 1.5}
