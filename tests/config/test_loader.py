"""Recipe loading, inheritance, overrides and type checking."""

import pytest
import yaml

from megatron_kd.config import load_config
from megatron_kd.config.loader import parse_override
from megatron_kd.errors import ConfigError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_chain_and_overrides(tmp_path):
    write(tmp_path / "models" / "m.yaml", "model:\n  num_layers: 4\n  hidden_size: 32\n  ffn_hidden_size: 64\n")
    write(tmp_path / "mid.yaml", "base: models/m\ndata:\n  mock: true\ntrain:\n  steps: 7\n  lr: 1.0e-3\n")
    run = write(tmp_path / "run.yaml", "base: [mid.yaml]\nmodel:\n  hidden_size: 48\n")
    cfg = load_config(run, ["train.steps=9", "train.lr=3e-4", "model.num_query_groups=2"])
    assert cfg.model.num_layers == 4  # from the base's base
    assert cfg.model.hidden_size == 48  # the recipe beats its base
    assert cfg.model.ffn_hidden_size == 64
    assert cfg.train.steps == 9  # overrides beat the recipe
    assert cfg.train.lr == pytest.approx(3e-4)  # "3e-4" (a YAML 1.1 string) read as a float
    assert cfg.model.num_query_groups == 2


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    run = write(tmp_path / "r.yaml", "train:\n  step: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.step' in .*r.yaml.*did you mean 'train.steps'"):
        load_config(run)
    with pytest.raises(ConfigError, match=r"unknown key 'parallel.tpp'.*did you mean 'parallel.tp'"):
        load_config(None, ["parallel.tpp=2"])
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*did you mean 'train'"):
        load_config(None, ["trian.steps=2"])


@pytest.mark.parametrize("override, message", [
    ("train.steps=ten", r"train.steps = 'ten' .* wrong type: expected int"),
    ("train.steps=2.5", r"train.steps = 2.5 .* expected int"),
    ("data.mock=1", r"data.mock = 1 .* expected bool"),
    ("precision.dtype=bf15", r"precision.dtype = 'bf15' .* is not one of .*did you mean 'bf16'"),
    ("train.lr=fast", r"train.lr = 'fast' .* expected float"),
    ("model=3", r"model in .* must be a mapping"),
])
def test_wrong_types(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_token_counts_in_scientific_notation():
    # 1e3 is a string in YAML 1.1; an integer field accepts it when it is a whole number.
    cfg = load_config(None, ["train.tokens=1e6", "train.warmup_steps=10", "data.mock=true"])
    assert cfg.train.tokens == 1_000_000


def test_yaml_syntax_error_has_line_number(tmp_path):
    run = write(tmp_path / "bad.yaml", "train:\n  steps: 3\n  lr: [1, 2\nmodel: {}\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error in .*bad.yaml:\d+:\d+"):
        load_config(run)


def test_missing_recipe_and_bad_override():
    with pytest.raises(ConfigError, match=r"recipe 'no/such/recipe' not found"):
        load_config("no/such/recipe")
    with pytest.raises(ConfigError, match=r"override 'train.steps' is not key=value"):
        parse_override("train.steps")


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_resolved_config_round_trips(tmp_path):
    from megatron_kd.config import dump_config

    cfg = load_config("train/tiny-mock", ["train.steps=3"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["steps"] == 3
