"""Every value a sweep writes into its points' overrides (its `out`, each teacher's checkpoint, name
and model, the cache directories, the teacher evaluation's validation sets) reads back as exactly
that value: a ` #` is no comment, `: ` no mapping, a leading `-`, `[`, `{`, `&`, `*`, `!` or quote
no YAML syntax (config/overrides.py)."""

from pathlib import Path

import pytest
import yaml

from megatron_kd.cli.main import main
from megatron_kd.config.loader import load_config, parse_override
from megatron_kd.errors import ConfigError
from megatron_kd.study import sweep as sw
from megatron_kd.study import sweep_teachers
from megatron_kd.study.jobs import argument_path

HOSTILE = ["x #3", "a: b", "{c}", "[d]", "-e", "&f", "*g", "!h", "'i'", '"j"', "k, l", "% m", "null", "1e-06"]


def _spec(tmp_path: Path, text: str, cache: bool) -> dict:
    """Relative paths starting with `text` (the sweep runs in tmp_path) and names holding it."""
    out = Path(text, "out")
    teacher = {"name": f"t {text}", "checkpoint": f"{text}/teacher", "model": text}
    if cache:
        teacher |= {"cache": {"top_k": 8}, "overrides": ["kd.top_k=8", "kd.other_bucket=true"]}
    spec = {"name": "v", "base": "train/tiny-mock", "out": str(out), "baseline": True, "seeds": [1, 2],
            "data_seed": 7, "grid": {"teacher": [teacher], "alpha": [0.5]}}
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(spec))
    return sw.load_sweep(tmp_path / "v.yaml")


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("cache", [False, True], ids=["online", "cached"])
def test_paths_and_names_reach_the_point_config_exactly(tmp_path, monkeypatch, text, cache):
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path, text, cache)
    points = sw.expand(spec)
    dirs = set()
    for point in points:
        cfg = sw.resolve_point(spec, point)
        assert cfg.run.name == point.name and point.name.count(text) == (point.teacher is not None)
        assert cfg.run.dir == str(Path(spec["out"]) / "runs" / point.name)
        dirs.add(cfg.run.dir)
        if point.teacher is None:
            continue
        assert cfg.teacher.checkpoint == f"{text}/teacher" and cfg.teacher.model == text
        assert cfg.teacher.cache == (str(Path(spec["out"]) / "caches" / f"t {text}") if cache else None)
        assert cfg.kd.alpha == 0.5 and cfg.data.seed == 7
    assert len(dirs) == len(points)  # each seed and point its own run directory


def test_teacher_evaluation_command_reads_back_exactly(tmp_path, monkeypatch):
    valid = {"wiki #1": str(tmp_path / "v #1"), "b: c": "-d"}
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path, "-x #2", cache=False)
    spec["overrides"] = [f"data.valid={yaml.safe_dump(valid, default_flow_style=True).strip()}"]
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd)
        raise ConfigError("stop here")

    monkeypatch.setattr(sweep_teachers.subprocess, "run", fake_run)
    with pytest.raises(ConfigError, match="stop here"):
        sw.evaluate_teachers(spec)
    (cmd,) = seen
    base = load_config(spec["base"], spec["overrides"])
    assert cmd[4] == "./-x #2/teacher"  # not an option of `mkd eval`
    parsed = {".".join(k): v for k, v in (parse_override(x) for x in cmd[5:8])}
    assert parsed == {"data.valid": valid, "train.seq_length": base.train.seq_length,
                      "logging.eval_samples": base.logging.eval_samples}


def test_a_path_that_looks_like_an_option_is_not_one():
    assert argument_path("-c #1/x") == "./-c #1/x"
    assert argument_path("/abs/-c") == "/abs/-c"


def test_stream_wait_reaches_the_job_exactly(tmp_path, monkeypatch, capsys):
    """`mkd sweep --slurm --stream S`: the wait reaches the point's job as the number S."""
    import megatron_kd.slurm.submit as slurm

    submitted = []
    monkeypatch.setattr(slurm, "require_sbatch", lambda: None)
    monkeypatch.setattr(slurm, "submit", lambda job: submitted.append(job) or str(100 + len(submitted)))
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path, "y #4", cache=True)
    assert main(["sweep", spec["_path"], "--slurm", "--stream", "300", "--gpus-per-node", "0",
                 "--ntasks-per-node", "1"]) == 0
    kd_jobs = [j for j in submitted if j.command == "train" and j.overrides]
    assert kd_jobs and all(parse_override(j.overrides[-1]) == (["teacher", "cache_wait_s"], 300.0) for j in kd_jobs)
    cache_job = next(j for j in submitted if j.command == "teacher-cache")
    assert cache_job.command_args[0] == f"--out={Path(spec['out']) / 'caches' / 't y #4'}"
    cache_id = str(101 + next(i for i, j in enumerate(submitted) if j is cache_job))
    assert all(j.dependency == cache_id and j.dependency_kind == "after" for j in kd_jobs)


@pytest.mark.parametrize("teacher,text", [({"name": "..", "checkpoint": "/t"}, "has no usable name ('..')"),
                                          ({"name": "", "checkpoint": "/t"}, "has no usable name ('')"),
                                          ({"checkpoint": "/"}, "has no usable name ('')"),
                                          ({"name": 5, "checkpoint": "/t"}, "`grid.teacher[].name` must be a string"),
                                          ({"name": "a\nb", "checkpoint": "/t"}, "contains the control character")])
def test_a_teacher_name_that_cannot_name_a_directory_is_one_line(tmp_path, teacher, text):
    spec = {"name": "n", "base": "train/tiny-mock", "out": str(tmp_path / "out"),
            "grid": {"teacher": [teacher | {"cache": {"top_k": 8}}], "alpha": [0.5]}}
    (tmp_path / "n.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        loaded = sw.load_sweep(tmp_path / "n.yaml")
        sw.write_recipes(loaded)
    assert text in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_the_sweeps_model_overrides_hold_for_every_student(tmp_path):
    """`overrides: [model.hidden_dropout=0.3]` is applied to every point, also when grid.student
    swaps each point's model in (the student's recipe was loaded without them)."""
    spec = {"name": "m", "base": "train/tiny-mock", "out": str(tmp_path / "out"), "baseline": True,
            "overrides": ["model.hidden_dropout=0.3"],
            "grid": {"student": ["models/tiny", "models/cpu-micro"]}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    spec = sw.load_sweep(tmp_path / "m.yaml")
    cfgs = [sw.resolve_point(spec, p) for p in sw.expand(spec)]
    assert len(cfgs) == 2 and all(c.model.hidden_dropout == 0.3 for c in cfgs)
    assert {c.model.name for c in cfgs} == {load_config(s, purpose="model").model.name
                                           for s in ("models/tiny", "models/cpu-micro")}
