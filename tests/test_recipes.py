"""Every shipped recipe loads and validates; model recipes match their published sizes."""

import pytest

from megatron_kd.config import load_config
from megatron_kd.config.loader import RECIPES_ROOT
from megatron_kd.models.params import count_parameters

ALL = sorted(p.relative_to(RECIPES_ROOT).with_suffix("").as_posix() for p in RECIPES_ROOT.rglob("*.yaml"))


def test_recipes_exist():
    assert {"models/tiny", "models/llama3-1b", "models/llama3-8b", "train/tiny-mock"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_recipe_loads_and_validates(name):
    if name.startswith("sweeps/"):  # a sweep: every point resolves to a valid run recipe
        from megatron_kd.study.sweep import expand, load_sweep, resolve_point

        spec = load_sweep(name)
        points = expand(spec)
        for point in points[:3] + points[-2:]:
            assert resolve_point(spec, point).train.global_batch_size >= 1
        return
    cfg = load_config(name, purpose="model" if name.startswith("models/") else "train")
    assert cfg.model.num_layers >= 1


def test_paper_family_sizes():
    # Llama-3.1-8B is 8.03B parameters; these shapes are the paper's (ANCHORS.md).
    assert count_parameters(load_config("models/llama3-8b", purpose="model").model).total == 8_030_261_248
    sizes = [count_parameters(load_config(f"models/llama3-{s}", purpose="model").model).total
             for s in ("0.5b", "1b", "3b", "8b")]
    assert sizes == sorted(sizes)
    # Qwen3-0.6B: tied embeddings, QK-norm.
    assert count_parameters(load_config("models/qwen3-0.6b", purpose="model").model).total == 596_049_920
