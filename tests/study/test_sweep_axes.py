"""Sweep axes that a scaling-law sweep needs: students at several lengths (grid.steps), and
teachers that are points of the sweep itself (run first, then their caches, then the rest)."""

import math
from pathlib import Path

import pytest
import yaml

from megatron_kd.errors import ConfigError
from megatron_kd.study import sweep as sw
from megatron_kd.study import sweep_local
from tests.study.runrow import run_row


def _spec(tmp_path, **extra):
    out = tmp_path / "out"
    spec = {"name": "law", "base": "train/tiny-mock", "out": str(out), "baseline": True,
            "grid": {"student": ["models/tiny"], "steps": [3, 9],
                     "teacher": [{"name": "own@9", "checkpoint": str(out / "runs" / "tiny-9steps__baseline"),
                                  "cache": {"top_k": 8}, "overrides": ["kd.top_k=8", "kd.other_bucket=true"]}],
                     "alpha": [0.5]}} | extra
    (tmp_path / "law.yaml").write_text(yaml.safe_dump(spec))
    return sw.load_sweep(tmp_path / "law.yaml")


def test_each_student_length_is_a_student_of_its_own(tmp_path):
    spec = _spec(tmp_path)
    points = sw.expand(spec)
    assert [p.name for p in points] == ["tiny-3steps__baseline", "tiny-3steps__t-own@9__a0.5",
                                        "tiny-9steps__baseline", "tiny-9steps__t-own@9__a0.5"]
    assert sw.grid_size(spec) == len(points)
    cfgs = {p.name: sw.resolve_point(spec, p) for p in points}
    assert cfgs["tiny-3steps__t-own@9__a0.5"].train.steps == 3 and cfgs["tiny-9steps__baseline"].train.steps == 9
    assert {p.meta["student"] for p in points} == {"tiny-3steps", "tiny-9steps"}  # its own baseline, own pairs
    assert all(p.meta["student_steps"] in (3, 9) for p in points)


def test_a_teacher_trained_by_the_sweep_and_its_cache_recipe(tmp_path):
    spec = _spec(tmp_path)
    assert sw.teacher_points(spec, sw.expand(spec)) == {"own@9": "tiny-9steps__baseline"}
    caches = [p.meta["teacher_cache"] for p in sw.expand(spec) if p.teacher is not None]
    assert [Path(c).name for c in caches] == ["own@9-3steps", "own@9-9steps"]  # one per length: pairs share data
    for cache, steps in zip(caches, (3, 9)):
        assert yaml.safe_load(sw.cache_recipe(spec, cache).read_text())["train"]["steps"] == steps


def test_teacher_points_run_before_the_caches_and_the_rest(tmp_path, monkeypatch):
    spec = _spec(tmp_path)
    order = []
    monkeypatch.setattr(sweep_local, "run_jobs", lambda jobs, at_once=1: order.append([j.start for j in jobs]))
    monkeypatch.setattr(sweep_local, "build_caches", lambda spec, pending, nproc, jobs: order.append(
        sorted({p.meta["teacher_cache"] for p, _, _ in pending if p.meta.get("teacher_cache")})))
    sw.run_local(spec)
    assert order[0] == ["[sweep] tiny-9steps__baseline: training"]
    assert order[1] == [str(tmp_path / "out" / "caches" / f"own@9-{n}steps") for n in (3, 9)]
    assert [s.split()[1] for s in order[2]] == ["tiny-3steps__baseline:", "tiny-3steps__t-own@9__a0.5:",
                                                 "tiny-9steps__t-own@9__a0.5:"]
    with pytest.raises(ConfigError, match="which sweep point tiny-9steps__baseline trains and has not run"):
        sw.run_local(spec, only=["tiny-3steps__t-*"])


def test_bad_length_axes_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="grid.steps` must be a list of student step counts"):
        _spec(tmp_path, grid={"steps": [0]})
    with pytest.raises(ConfigError, match="as grid.steps or as baseline_steps, not both"):
        _spec(tmp_path, baseline_steps=[4])
    spec = _spec(tmp_path)
    spec["grid"]["teacher"][0]["checkpoint"] = str(tmp_path / "out" / "runs" / "tiny-3steps__t-own@9__a0.5")
    with pytest.raises(ConfigError, match="itself reads a teacher; a teacher trained by the sweep must be a baseline"):
        sw.teacher_points(spec, sw.expand(spec))


def test_a_unigram_teacher_entry(text_corpus, tmp_path):
    """grid.teacher [{unigram: true}]: its points train against the corpus's frequencies, its own
    loss is written where the report reads a teacher's; with a checkpoint or a cache it is one line."""
    import json

    from tests.conftest import corpus_overrides

    spec = {"name": "u", "base": "train/tiny-mock", "out": str(tmp_path / "out"), "baseline": True,
            "overrides": corpus_overrides(text_corpus), "grid": {"teacher": [{"unigram": True}], "alpha": [0.2]}}
    (tmp_path / "u.yaml").write_text(yaml.safe_dump(spec))
    loaded = sw.load_sweep(tmp_path / "u.yaml")
    kd = next(p for p in sw.expand(loaded) if p.teacher)
    assert kd.name == "student__t-unigram__a0.2" and "teacher.unigram=true" in kd.overrides
    cfg = sw.resolve_point(loaded, kd)
    assert cfg.teacher.unigram and cfg.teacher.checkpoint is None
    assert sw.teacher_points(loaded, sw.expand(loaded)) == {}
    losses = sw.evaluate_teachers(loaded)["unigram"]["loss"]
    assert set(losses) == {"indomain"} and 4.0 < losses["indomain"] < math.log(512)
    assert json.loads((tmp_path / "out" / "teachers" / "unigram.json").read_text())["loss"] == losses
    for bad in ({"unigram": True, "checkpoint": "x"}, {"unigram": True, "cache": {"top_k": 8}}, {"unigram": 1}):
        spec["grid"]["teacher"] = [bad]
        (tmp_path / "u.yaml").write_text(yaml.safe_dump(spec))
        with pytest.raises(ConfigError, match="grid.teacher"):
            sw.load_sweep(tmp_path / "u.yaml")


def test_slurm_refuses_a_point_whose_sweep_teacher_is_left_out(tmp_path, monkeypatch, capsys):
    """On Slurm a point can wait only for a teacher job submitted with it: --only without the
    teacher's point (not finished) is one line, before anything is submitted."""
    from megatron_kd.cli.main import main
    from megatron_kd.slurm import submit

    _spec(tmp_path)
    monkeypatch.setattr(submit, "require_sbatch", lambda: None)
    monkeypatch.setattr(submit, "submit", lambda *a, **k: pytest.fail("submitted"))
    rc = main(["sweep", str(tmp_path / "law.yaml"), "--slurm", "--only", "tiny-3steps__t-*", "--gpus-per-node", "0",
               "--ntasks-per-node", "1"])
    assert rc == 2 and "which sweep point tiny-9steps__baseline trains and has not finished" in capsys.readouterr().err


def test_the_law_leaves_out_the_unigram_control():
    from megatron_kd.study.law_io import runs_of

    rows = [run_row("u", student_nonembedding_params=1e5, student_tokens=1e6, val={"indomain": 4.0},
                    teacher="unigram", teacher_params=0, alpha=0.2, teacher_val={"indomain": 6.0}),
            run_row("b", student_nonembedding_params=1e5, student_params=3e5, student_tokens=1e6,
                    val={"indomain": 4.1}, teacher=None, alpha=0.0)]
    runs, notes = runs_of(rows, "indomain")
    assert [r.name for r in runs] == ["b"] and "left out 1 run(s): a teacher without a model" in notes[0]
