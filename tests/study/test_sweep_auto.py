"""`auto` on a sweep's α axis: one kd.auto point per teacher beside the fixed values (its ceiling
the sweep's auto_ceiling), named like them, run from the same cache, counted by every reader of
sweeps, and kept out of the fixed-α family the claims read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from megatron_kd.cli.main import main
from megatron_kd.errors import ConfigError
from megatron_kd.study import analysis, power, sweep_local
from megatron_kd.study import sweep as sw
from megatron_kd.study.table import read_table, write_table
from tests.study.synthetic import TEACHERS, sweep_rows


def _write(tmp_path, alphas, **extra) -> str:
    out = tmp_path / "out"
    spec = {"name": "auto", "base": "train/tiny-mock", "out": str(out), "seeds": [1, 2], "data_seed": 7,
            "grid": {"student": ["models/tiny"],
                     "teacher": [{"name": "t1", "checkpoint": str(tmp_path / "t1"), "cache": {"top_k": 8},
                                  "overrides": ["kd.top_k=8", "kd.other_bucket=true"]}],
                     "alpha": alphas}} | extra
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_an_auto_point_per_teacher_named_and_resolved_like_the_fixed_ones(tmp_path):
    spec = sw.load_sweep(_write(tmp_path, [0.5, "auto"], auto_ceiling=0.8))
    points = sw.expand(spec)
    assert [p.name for p in points] == [
        "tiny__baseline__seed1", "tiny__t-t1__a0.5__seed1", "tiny__t-t1__aauto__seed1",
        "tiny__baseline__seed2", "tiny__t-t1__a0.5__seed2", "tiny__t-t1__aauto__seed2"]
    assert sw.grid_size(spec) == len(points)
    auto = points[2]
    assert auto.meta["alpha"] is None and auto.meta["auto_ceiling"] == 0.8
    assert auto.meta["teacher_cache"] == points[1].meta["teacher_cache"]  # the fixed points' cache, reused
    cfg = sw.resolve_point(spec, auto)
    assert cfg.kd.auto.enabled and cfg.kd.alpha == 0.8 and cfg.kd.top_k == 8
    fixed = sw.resolve_point(spec, points[1])
    assert not fixed.kd.auto.enabled and fixed.kd.alpha == 0.5 and cfg.kd.auto.tau == fixed.kd.auto.tau
    design = power.designs_of(points)["tiny"]
    assert design.family_of["tiny__t-t1__aauto"] == "auto α" and [p["alpha"] for p in design.kd] == [0.5]
    assert sw.resolve_point(sw.load_sweep(_write(tmp_path, ["auto"])), sw.expand(
        sw.load_sweep(_write(tmp_path, ["auto"])))[1]).kd.alpha == 1.0  # the default ceiling


def test_the_dry_run_counts_the_auto_points(tmp_path, capsys):
    assert main(["sweep", _write(tmp_path, [0.2, 1.0, "auto"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("8 runs in ") and "tiny__t-t1__aauto__seed2.yaml" in out
    listed = json.loads((tmp_path / "out" / "points.json").read_text())
    assert [p.get("auto_ceiling") for p in listed if "aauto" in p["name"]] == [1.0, 1.0]


@pytest.mark.parametrize("alphas, extra, said", [
    ([0.5, "Auto"], {}, "`grid.alpha` must be a list of numbers, and optionally `auto`"),
    ([0.5, "auto", "auto"], {}, "`grid.alpha` lists 'auto' twice"),
    ([0.5, "auto"], {"auto_ceiling": 1.5}, "`auto_ceiling` must be a number in (0, 1]"),
    ([0.5], {"auto_ceiling": 0.5}, "`auto_ceiling` must be given with `auto` in grid.alpha"),
    ([0.5, "auto"], {"primary": {"claim 1": {"teachers": ["t1"], "alpha": ["auto"], "set": "indomain"}}},
     "primary.claim 1.alpha` must be a list of the grid's fixed α values"),
])
def test_bad_auto_values_are_one_line(tmp_path, alphas, extra, said):
    with pytest.raises(ConfigError) as e:
        sw.load_sweep(_write(tmp_path, alphas, **extra))
    assert said in str(e.value) and "\n" not in str(e.value)


def test_resume_runs_only_the_auto_points_added_to_a_finished_sweep(tmp_path, monkeypatch):
    """The running study's case: its fixed-α points are done, `auto` is added to the YAML and the
    sweep re-run: only the new points train, the cache is reused, the recipes of the done ones are
    rewritten byte for byte."""
    done, trained, caches = set(), [], []
    monkeypatch.setattr(sweep_local, "finished", lambda run_dir: run_dir.name in done)
    monkeypatch.setattr(sweep_local, "run_jobs",
                        lambda jobs, at_once=1: trained.extend(j.start.split()[1][:-1] for j in jobs))
    monkeypatch.setattr(sweep_local, "build_caches", lambda spec, pending, nproc, jobs: caches.extend(
        p.meta["teacher_cache"] for p, _, _ in pending if p.meta.get("teacher_cache")))
    first = sw.load_sweep(_write(tmp_path, [0.2, 1.0]))
    sw.run_local(first)
    done |= set(trained)
    recipes = {p: p.read_bytes() for p in (tmp_path / "out" / "recipes").iterdir()}
    trained.clear(), caches.clear()
    sw.run_local(sw.load_sweep(_write(tmp_path, [0.2, 1.0, "auto"])))
    assert trained == ["tiny__t-t1__aauto__seed1", "tiny__t-t1__aauto__seed2"]
    assert len(set(caches)) == 1 and caches[0] == str(tmp_path / "out" / "caches" / "t1")  # the same cache dir
    assert all(p.read_bytes() == text for p, text in recipes.items())


SETS = ["indomain", "ood_dev", "ood_test"]


def _rows(auto_effect=None):
    """A synthetic sweep (3 teachers, fixed α 0.2/0.5/1.0, 4 seeds) and, with auto_effect(teacher) ->
    its true gain, one auto point per teacher; the fixed rows are the same draws either way."""
    rows = sweep_rows(np.random.default_rng(11), effect=lambda t, a, s: 0.02 * a, seeds=(1, 2, 3, 4),
                      teachers=dict(list(TEACHERS.items())[:3]), sets=tuple(SETS),
                      auto=None if auto_effect is None else lambda t, s: auto_effect(t),
                      common={"data_seed": 7, "student_tokens": 614400})
    return rows


def test_the_table_round_trips_auto_runs(tmp_path):
    rows = _rows(auto_effect=lambda t: 0.0)
    write_table(tmp_path / "a.csv", rows, SETS)
    back, _ = read_table(tmp_path / "a.csv")
    autos = [r for r in back if r.auto_ceiling is not None]
    assert len(autos) == 12 and all(r.alpha is None and r.auto_ceiling == 1.0 for r in autos)
    line = next(x for x in (tmp_path / "a.csv").read_text().splitlines() if "-aauto-" in x)
    assert ",auto," in line and line.endswith(",1.0")
    write_table(tmp_path / "b.csv", back, SETS)
    assert (tmp_path / "b.csv").read_text() == (tmp_path / "a.csv").read_text()
    write_table(tmp_path / "c.csv", _rows(), SETS)  # no auto run: no auto_ceiling column
    assert "auto" not in (tmp_path / "c.csv").read_text().splitlines()[0]


def test_a_bad_auto_cell_is_one_line(tmp_path):
    write_table(tmp_path / "a.csv", _rows(auto_effect=lambda t: 0.0), SETS)
    text = (tmp_path / "a.csv").read_text()
    (tmp_path / "b.csv").write_text(text.replace(",1.0\n", ",2\n", 1))
    with pytest.raises(ConfigError, match=r"column auto_ceiling: '2' is not a number in \(0, 1\]"):
        read_table(tmp_path / "b.csv")


def test_auto_points_leave_the_claims_and_the_fixed_alpha_family_as_they_were():
    without, with_auto = _rows(), _rows(auto_effect=lambda t: 0.01)
    a = analysis.analyse(without, SETS, n_boot=50)["students"]["s"]
    b = analysis.analyse(with_auto, SETS, n_boot=50)["students"]["s"]
    fixed = {p["key"]: p["gains"] for p in a["points"]}
    assert {p["key"]: p["gains"] for p in b["points"] if p["key"] in fixed} == fixed
    assert [p for p in b["points"] if p["key"] not in fixed] and all(
        analysis.alpha_label(p) == "auto" for p in b["points"] if p["key"] not in fixed)
    assert json.dumps(a["claims"], default=str) == json.dumps(b["claims"], default=str)
    assert a["best_alpha"] == b["best_alpha"]
    for s in SETS:
        fam = b["noise"][s]["families"]
        assert set(fam) == {"fixed α", "auto α"}
        assert (fam["fixed α"]["sigma"], fam["fixed α"]["df"]) == (a["noise"][s]["sigma"], a["noise"][s]["df"])


@pytest.mark.slow
def test_a_finished_sweep_gains_its_auto_point_from_the_same_cache(mock_teacher, tmp_path):
    """End to end at the smallest size: a fixed-α sweep from a top-k cache runs, `auto` is added,
    and the re-run trains only the kd.auto point, from the cache the fixed point read."""
    out = tmp_path / "out"
    spec = {"name": "auto", "base": "train/tiny-mock", "out": str(out), "overrides": ["train.steps=3"],
            "baseline": False,
            "grid": {"teacher": [{"name": "t", "checkpoint": str(mock_teacher), "cache": {"top_k": 8},
                                  "overrides": ["kd.top_k=8", "kd.other_bucket=true"]}], "alpha": [0.5]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert sw.run_local(sw.load_sweep(tmp_path / "s.yaml")) == ["student__t-t__a0.5"]
    cache = out / "caches" / "t"
    stamp = (cache / "COMPLETE").stat().st_mtime_ns
    spec["grid"]["alpha"].append("auto")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert sw.run_local(sw.load_sweep(tmp_path / "s.yaml")) == ["student__t-t__aauto"]
    assert (cache / "COMPLETE").stat().st_mtime_ns == stamp  # the teacher did not run again
    metrics = [json.loads(line) for line in (out / "runs" / "student__t-t__aauto" / "metrics.jsonl").open()]
    assert all("kd/alpha_effective" in m for m in metrics if "loss" in m)
