"""Loading a recipe is bounded: each base file is read and merged once per load (a diamond of
bases 22 levels deep was 2**22 loads), at most MAX_RECIPE_FILES distinct files take part, and a
file that is not UTF-8 text (`mkd config /bin/ls`) or holds a number too long to read is one
line naming it."""

import time
from pathlib import Path

import pytest

from megatron_kd.cli.main import main
from megatron_kd.config import loader
from megatron_kd.config.loader import MAX_RECIPE_FILES, load_config, load_recipe_dict
from megatron_kd.errors import ConfigError


def _diamond(tmp_path, levels: int):
    (tmp_path / "r0.yaml").write_text("base: train/tiny-mock\ntrain: {steps: 3}\n")
    for n in range(1, levels + 1):
        (tmp_path / f"r{n}.yaml").write_text(f"base: [r{n - 1}, r{n - 1}]\nmodel: {{name: level{n}}}\n")
    return tmp_path / f"r{levels}.yaml"


def test_a_diamond_of_bases_loads_each_file_once(tmp_path, monkeypatch):
    top = _diamond(tmp_path, 22)
    reads = []
    real = loader.read_yaml
    monkeypatch.setattr(loader, "read_yaml", lambda path: reads.append(path) or real(path))
    start = time.monotonic()
    cfg = load_config(top)
    assert time.monotonic() - start < 5
    assert cfg.model.name == "level22" and cfg.train.steps == 3
    assert len(reads) == len(set(reads))  # each file once
    assert sorted(p.name for p in reads if p.parent == tmp_path) == sorted(f"r{n}.yaml" for n in range(23))


def test_the_same_base_twice_merges_as_before(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {steps: 3, lr: 0.1}\n")
    (tmp_path / "b.yaml").write_text("base: a\ntrain: {lr: 0.2}\n")
    (tmp_path / "c.yaml").write_text("base: [b, a]\nmodel: {name: c}\n")
    assert load_recipe_dict(tmp_path / "c.yaml") == {"train": {"steps": 3, "lr": 0.1}, "model": {"name": "c"}}


def test_more_recipe_files_than_the_limit_is_one_line(tmp_path):
    count = MAX_RECIPE_FILES + 5
    for n in range(count):
        (tmp_path / f"f{n}.yaml").write_text("train: {steps: 3}\n")
    bases = ", ".join(f"f{n}" for n in range(count))
    (tmp_path / "wide.yaml").write_text(f"base: [{bases}]\n")
    with pytest.raises(ConfigError, match=f"builds on more than {MAX_RECIPE_FILES} recipe files") as err:
        load_recipe_dict(tmp_path / "wide.yaml")
    assert "\n" not in str(err.value)


def test_a_cycle_is_still_named(tmp_path):
    (tmp_path / "x.yaml").write_text("base: y\n")
    (tmp_path / "y.yaml").write_text("base: x\n")
    with pytest.raises(ConfigError, match="recipe bases form a cycle"):
        load_recipe_dict((tmp_path / "x.yaml").resolve())


def _one_error(capsys, argv, text):
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and text in lines[0] and "Traceback" not in out + err, out + err


@pytest.mark.parametrize("where", ["recipe", "base"])
def test_a_binary_recipe_or_base_is_one_line(tmp_path, capsys, where):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00train: 1\n")
    recipe = binary if where == "recipe" else tmp_path / "top.yaml"
    if where == "base":
        recipe.write_text("base: binary\n")
    _one_error(capsys, ["config", str(recipe)], f"recipe {binary} is not UTF-8 text")


def test_bin_ls_is_one_line(capsys):
    _one_error(capsys, ["config", "/bin/ls"], f"recipe {Path('/bin/ls').resolve()} is not UTF-8 text")  # names it


def test_a_number_too_long_to_read_is_one_line(tmp_path, capsys):
    (tmp_path / "big.yaml").write_text("base: train/tiny-mock\nmodel: {hidden_size: " + "1" * 5000 + "}\n")
    _one_error(capsys, ["config", str(tmp_path / "big.yaml")], "holds a number too long to read")
    _one_error(capsys, ["config", "train/tiny-mock", "model.hidden_size=" + "7" * 5000],
               "override 'model.hidden_size' holds a number too long to read")
