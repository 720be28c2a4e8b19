"""A KD point and the baseline it is paired with read the same token stream, by construction:
with students at several lengths (grid.steps) and a cached teacher, and with several seeds.

A run builds its stream from a sample count (training/loop.py): a run from a teacher cache the
cache's (its recipe's steps x global batch, training/teacher_cache.py plan_cache), any other run
its own; megatron-core shuffles by the number of epochs that count spans, so two counts across
an epoch boundary are two streams (an α -> 0 KD point then "gains" over its own baseline)."""

from pathlib import Path

import pytest
import yaml

from megatron_kd.config.loader import load_config
from megatron_kd.config.validate import train_steps
from megatron_kd.errors import ConfigError
from megatron_kd.study import sweep as sw


def _spec(tmp_path: Path, **extra) -> dict:
    spec = {"name": "pairs", "base": "train/tiny-mock", "out": str(tmp_path / "out"), "baseline": True,
            "seeds": [1, 2], "data_seed": 5,
            "grid": {"student": ["models/tiny"], "steps": [3, 9, 27],
                     "teacher": [{"name": "cached", "checkpoint": str(tmp_path / "t1"), "cache": {"top_k": 8},
                                  "overrides": ["kd.top_k=8", "kd.other_bucket=true"]},
                                 {"name": "online", "checkpoint": str(tmp_path / "t2")}],
                     "alpha": [1e-6, 0.5]}} | extra
    (tmp_path / "pairs.yaml").write_text(yaml.safe_dump(spec))
    return sw.load_sweep(tmp_path / "pairs.yaml")


def _stream(cfg, source) -> tuple:
    """What a run's training stream is built from: the sample count (of `source`, the run itself or
    its cache's recipe) and every key that seeds or shapes the samples."""
    samples = train_steps(source) * source.train.global_batch_size
    seed = cfg.data.seed if cfg.data.seed is not None else cfg.run.seed
    return samples, seed, cfg.train.seq_length, cfg.train.global_batch_size, yaml.safe_dump(vars(cfg.data))


def test_each_kd_point_reads_its_baselines_stream(tmp_path):
    spec = _spec(tmp_path)
    points = sw.expand(spec)
    streams = {}
    for p in points:
        cfg = sw.resolve_point(spec, p)
        source = cfg  # the cache job's recipe, for a point that reads a cache
        if p.meta.get("teacher_cache"):
            source = load_config(sw.cache_recipe(spec, p.meta["teacher_cache"]))
        streams[p.name] = _stream(cfg, source)
    kd = [p for p in points if p.teacher is not None]
    assert len(kd) == 2 * 3 * 2 * 2  # seeds x lengths x teachers x alphas
    for p in kd:
        baseline = next(b for b in points if b.teacher is None and b.meta["student"] == p.meta["student"]
                        and b.meta["seed"] == p.meta["seed"])
        assert streams[p.name] == streams[baseline.name], (p.name, baseline.name)


def test_a_cache_serves_the_points_of_one_length(tmp_path):
    spec = _spec(tmp_path)
    by_cache: dict = {}
    for p in sw.expand(spec):
        if p.meta.get("teacher_cache"):
            by_cache.setdefault(p.meta["teacher_cache"], set()).add(p.meta["student_steps"])
    assert sorted(Path(c).name for c in by_cache) == ["cached-27steps", "cached-3steps", "cached-9steps"]
    assert all(len(lengths) == 1 for lengths in by_cache.values())


@pytest.mark.parametrize("override", ["data.seed=3", "train.steps=5", "train.global_batch_size=8",
                                      "train.seq_length=16", "run.seed=4", "data={mock: true}"])
def test_a_teacher_override_that_changes_the_data_is_one_line(tmp_path, override):
    spec = {"name": "p", "base": "train/tiny-mock", "out": str(tmp_path / "out"),
            "grid": {"teacher": [{"name": "t", "checkpoint": "/t", "overrides": [override]}], "alpha": [0.5]}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="changes the data its points train on") as err:
        sw.load_sweep(tmp_path / "p.yaml")
    assert "\n" not in str(err.value)
