"""One gain in `mkd report`: the per-run table and the paired table read a run's gain the same
way — against the baseline run of its seed where the paired fit pairs by seed, against the
baselines' mean (marked †, and said why) where it cannot."""

from __future__ import annotations

import re

import numpy as np
import pytest

from megatron_kd.study import compute_report, report_figures
from megatron_kd.study.report import write_report
from tests.study.runrow import run_row


@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
    """The tables only (the figures have their own tests)."""
    monkeypatch.setattr(report_figures, "draw", lambda *a, **k: [])
    monkeypatch.setattr(compute_report, "plot", lambda *a, **k: [])


def _run(name, seed, loss, teacher=None, alpha=0.0):
    kd = dict(teacher_val={"indomain": 3.9}, temperature=1.0, kind="forward_kl", teacher_params=1e6,
              teacher_tokens=10**6) if teacher else {}
    return run_row(name, "s", seed=seed, data_seed=7, teacher=teacher, alpha=alpha,
                   val={"indomain": loss}, student_params=1e5, student_tokens=10**5, **kd)


def _cell(md: str, run: str, column: int) -> str:
    row = next(line for line in md.splitlines() if line.startswith(f"| {run} |"))
    return row.split(" | ")[column].strip(" |")


def _paired_gain(md: str, teacher: str) -> str:
    row = next(line for line in md.splitlines() if line.startswith(f"| {teacher} | 0.5 |"))
    return row.split(" | ")[-1].split()[0]


def test_one_seed_per_point_reads_the_same_gain_in_both_tables(tmp_path):
    """Two baseline seeds 0.14 nats apart and one KD seed per point (the demo's design): no
    residual degrees of freedom, yet the seeds still pair each run with its baseline run, so both
    tables read the same-seed gain, unmarked (the baselines' seed spread stands for the noise)."""
    rows = [_run("b1", 1, 4.00), _run("b2", 2, 4.14), _run("k", 1, 4.035, "t", 0.5), _run("j", 2, 4.20, "u", 0.5)]
    md = write_report(rows, ["indomain"], tmp_path / "r", "t", 0.95, 0.01, None)["markdown"]
    assert _cell(md, "k", 9) == "-0.0350" and _paired_gain(md, "t") == "-0.0350"
    assert _cell(md, "j", 9) == "-0.0600" and _paired_gain(md, "u") == "-0.0600"
    assert "†" not in md
    assert "- indomain: paired by seed, no residual degrees of freedom: the baselines' seed spread (sd 0.0990" in md


def test_paired_design_point_gain_is_the_mean_of_its_runs_gains(tmp_path):
    rng = np.random.default_rng(0)
    seed_effect = {s: rng.normal(0, 0.07) for s in (1, 2, 3)}
    rows = [_run(f"b{s}", s, 4.0 + seed_effect[s] + rng.normal(0, 0.01)) for s in (1, 2, 3)]
    for t, gain in (("t", 0.05), ("u", -0.02)):
        rows += [_run(f"{t}{s}", s, 4.0 - gain + seed_effect[s] + rng.normal(0, 0.01), t, 0.5) for s in (1, 2, 3)]
    out = write_report(rows, ["indomain"], tmp_path / "r", "t", 0.95, 0.01, None)
    md = out["markdown"]
    assert "†" not in md
    base = {r.seed: r.val["indomain"] for r in rows if not r.teacher}
    for t in ("t", "u"):
        runs = [r for r in out["rows"] if r.teacher == t]
        gain = {r.name: out["run_gains"][r.name].gain["indomain"] for r in runs}
        for r in runs:  # each run against the baseline run of its seed
            assert gain[r.name] == pytest.approx(base[r.seed] - r.val["indomain"], abs=1e-12)
            assert _cell(md, r.name, 9) == f"{gain[r.name]:.4f}"
        mean = float(np.mean(list(gain.values())))
        point = next(p for p in out["study"]["students"]["s"]["points"] if p["teacher"] == t)
        assert point["gains"]["indomain"]["gain"] == pytest.approx(mean, abs=1e-12)
        assert float(_paired_gain(md, t)) == pytest.approx(mean, abs=1e-4)


def test_a_run_without_a_baseline_of_its_seed_is_marked(tmp_path):
    rows = [_run("b1", 1, 4.0), _run("b2", 2, 4.1), _run("t1", 1, 3.9, "t", 0.5), _run("t2", 2, 4.0, "t", 0.5),
            _run("t3", 3, 3.95, "t", 0.5), _run("u1", 1, 4.05, "u", 0.5), _run("u2", 2, 4.12, "u", 0.5)]
    md = write_report(rows, ["indomain"], tmp_path / "r", "t", 0.95, 0.01, None)["markdown"]
    assert _cell(md, "t3", 9) == "0.1000 †" and _cell(md, "t1", 9) == "0.1000"
    assert re.search(r"† Against the baselines' mean, not paired: s on indomain: no baseline run of its seed", md)
