"""Overrides the package writes read back as exactly the values given (config/overrides.py)."""

import math

import pytest

from megatron_kd.config.loader import parse_override
from megatron_kd.config.overrides import override, yaml_value

HOSTILE_STRINGS = [
    "/data/teacher #2", "/data/out #3/x", "a: b", "{x: 1}", "[1, 2]", "-leading", "- item", "&anchor",
    "*alias", "!tag", "!!python/object/apply:os.system ['id']", "'single'", '"double"', "line\nbreak",
    "tab\there", "back\\slash", "#start", "null", "true", "~", "1e-06", "0x10", "", " padded ", "é ü 漢",
    "%j $(id) `id`", "key=value", "a,b", "? q", "| block", "> folded", "@at", "emoji 😀",
]


@pytest.mark.parametrize("text", HOSTILE_STRINGS)
def test_a_string_reads_back_as_itself(text):
    assert parse_override(override("teacher.checkpoint", text)) == (["teacher", "checkpoint"], text)


@pytest.mark.parametrize("value", [0, -3, 2**40, 0.5, 1e-06, 1e20, -2.5e-300, 1.0, True, False, None])
def test_a_number_bool_or_null_reads_back_as_itself(value):
    _, got = parse_override(override("kd.alpha", value))
    assert got == value and type(got) is type(value)


def test_non_finite_floats_keep_their_value():
    assert math.isnan(parse_override(override("x", float("nan")))[1])
    assert parse_override(override("x", float("-inf")))[1] == float("-inf")


def test_mappings_and_lists_read_back_with_hostile_members():
    value = {"wiki #1": "/d/v #1", "a: b": ["x #", "-y"], "n": 3}
    assert parse_override(override("data.valid", value))[1] == value


def test_an_unknown_type_is_refused():
    with pytest.raises(TypeError):
        yaml_value(object())


def test_a_checkpoint_read_back_under_a_hostile_run_dir_keeps_it(tmp_path):
    """`mkd eval` re-reads a checkpoint's config with run.dir set to where the checkpoint lies: a
    directory named with ' #' or ': ' is that directory, not a shorter one."""
    from megatron_kd.checkpoint.refs import saved_config
    from megatron_kd.config import dump_config, load_config

    run_dir = tmp_path / "runs #2: {x}"
    ckpt = run_dir / "checkpoints" / "step_2"
    ckpt.mkdir(parents=True)
    dump_config(load_config("train/tiny-mock"), ckpt / "config.yaml")
    cfg = saved_config(ckpt, [override("run.dir", ckpt.parent.parent)], state={})
    assert cfg.run.dir == str(run_dir)


@pytest.mark.parametrize("typed, value", [("run.dir=/data/out #3", "/data/out #3"), ("run.dir=#x", "#x"),
                                          ("run.name= a #b ", "a #b"), ('run.dir="q #1"', "q #1"),
                                          ('data.valid={"w #1": "/d #2"}', {"w #1": "/d #2"}),
                                          ("train.steps=20", 20)])
def test_a_typed_override_with_a_hash_keeps_its_value(typed, value):
    """On the command line ` #` in a plain value is part of it (a path), never a YAML comment."""
    assert parse_override(typed)[1] == value
