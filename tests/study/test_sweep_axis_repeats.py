"""A value given twice on one sweep axis is one line naming the axis and the value (it would run
one point twice, and was blamed on the teachers' names)."""

import pytest
import yaml

from megatron_kd.errors import ConfigError
from megatron_kd.study import sweep as sw

CASES = {
    "steps": ({"grid": {"steps": [4, 4], "teacher": [{"name": "t", "checkpoint": "/t"}]}},
              "`grid.steps` lists 4 twice"),
    "alpha": ({"grid": {"alpha": [0.5, 0.5], "teacher": [{"name": "t", "checkpoint": "/t"}]}},
              "`grid.alpha` lists 0.5 twice"),
    "alpha_int_and_float": ({"grid": {"alpha": [1, 1.0], "teacher": [{"name": "t", "checkpoint": "/t"}]}},
                            "`grid.alpha` lists 1.0 twice"),
    "student": ({"grid": {"student": ["models/tiny", "models/tiny"]}}, "`grid.student` lists 'models/tiny' twice"),
    "seeds": ({"seeds": [3, 3]}, "`seeds` lists 3 twice"),
    "baseline_steps": ({"baseline_steps": [2, 2]}, "`baseline_steps` lists 2 twice"),
    "teacher_tokens": ({"grid": {"teacher_grid": {"models": {"m": "models/tiny"}, "tokens": [1000, "1e3"],
                                                  "checkpoint": "/c/{model}/{tokens}"}}},
                       "`grid.teacher_grid.tokens` lists 1000 twice"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_repeated_axis_value_is_one_line(tmp_path, case):
    extra, text = CASES[case]
    spec = {"name": "r", "base": "train/tiny-mock", "out": str(tmp_path / "out"), "baseline": True} | extra
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        sw.load_sweep(tmp_path / "r.yaml")
    assert text in str(err.value) and "give each value once" in str(err.value) and "\n" not in str(err.value)
    assert "teachers distinct names" not in str(err.value)
    assert not (tmp_path / "out").exists()


def _load_refused(tmp_path, extra: dict) -> str:
    spec = {"name": "r", "base": "train/tiny-mock", "out": str(tmp_path / "out"), "baseline": True} | extra
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        sw.load_sweep(tmp_path / "r.yaml")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    return str(err.value)


def test_a_seed_in_seeds_and_baseline_seeds_is_named(tmp_path):
    err = _load_refused(tmp_path, {"seeds": [1, 2], "baseline_seeds": [1]})
    assert "seed 1 is in both `seeds` and `baseline_seeds`" in err
    assert "teachers distinct names" not in err


def test_one_teacher_under_two_names_is_refused(tmp_path):
    """Same checkpoint (spelled ./ or not), model, cache and overrides: the report would count it twice."""
    err = _load_refused(tmp_path, {"grid": {"teacher": [{"name": "a", "checkpoint": "/ckpt/t"},
                                                        {"name": "b", "checkpoint": "/ckpt/./t"}]}})
    assert "grid.teacher entries 'a' and 'b' are the same teacher" in err


def test_one_checkpoint_with_different_overrides_is_two_teachers(tmp_path):
    spec = {"name": "r", "base": "train/tiny-mock", "out": str(tmp_path / "out"), "baseline": True,
            "grid": {"teacher": [{"name": "a", "checkpoint": "/ckpt/t"},
                                 {"name": "b", "checkpoint": "/ckpt/t", "overrides": ["kd.top_k=8"]}]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(spec))
    try:
        sw.load_sweep(tmp_path / "r.yaml")
    except ConfigError as exc:
        assert "same teacher" not in str(exc)
