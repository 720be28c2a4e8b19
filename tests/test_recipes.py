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


# `make demo` must end in a finding (docs/STUDY.md, "The demo"): its sweep's design is held to
# what that needs, and its teachers to the runs scripts/demo.sh trains.
DEMO_SWEEP = "sweeps/cpu-mini"


def _point_key(point) -> str:
    return point.name.removesuffix(f"__seed{point.meta['seed']}")


def test_demo_sweep_gives_every_kd_point_seeds_and_the_paired_model_residual_df():
    """The report's paired model of the KD points and the baseline (loss = point + seed + noise,
    least squares) needs residual degrees of freedom: without them the demo can call nothing."""
    import numpy as np

    from megatron_kd.study.sweep import expand, load_sweep

    runs = [p for p in expand(load_sweep(DEMO_SWEEP)) if p.meta.get("baseline_steps") is None]
    keys, seeds = sorted({_point_key(p) for p in runs}), sorted({p.meta["seed"] for p in runs})
    assert len(seeds) >= 2 and len(runs) == len(keys) * len(seeds)  # every point at every seed
    assert len({p.meta["alpha"] for p in runs if p.teacher is not None}) >= 2
    x = np.zeros((len(runs), len(keys) + len(seeds)))
    for row, p in enumerate(runs):
        x[row, keys.index(_point_key(p))] = x[row, len(keys) + seeds.index(p.meta["seed"])] = 1
    assert len(runs) - np.linalg.matrix_rank(x) >= 4  # t(4) at 97.5 %: 2.8 standard errors


def _demo_teacher_runs() -> dict:
    """{run.dir: (config, tokens it trains)} of each teacher scripts/demo.sh trains, with the
    overrides given on its line (train.stop_at_step ends the weak teacher early)."""
    import re

    from tests.distributed import REPO

    runs = {}
    for name, args in re.findall(r"\$MKD train (train/\S+)((?: [\w.]+=\S+)*)", (REPO / "scripts/demo.sh").read_text()):
        cfg = load_config(name, args.split())
        steps = cfg.train.stop_at_step or cfg.train.steps
        runs[cfg.run.dir] = (cfg, steps * cfg.train.global_batch_size * cfg.train.seq_length)
    return runs


def test_demo_teachers_are_the_checkpoints_the_demo_trains():
    from megatron_kd.study.sweep import expand, load_sweep

    runs = _demo_teacher_runs()
    spec = load_sweep(DEMO_SWEEP)
    student = load_config(spec["base"], spec["overrides"]).train
    student_tokens = student.steps * student.global_batch_size * student.seq_length
    trained = {}
    for point in expand(spec):
        t = point.teacher
        if t is None or t["name"] in trained:
            continue
        ckpt = t["checkpoint"]
        run_dir = next((d for d in runs if ckpt == d or ckpt.startswith(f"{d}/checkpoints/")), None)
        assert run_dir, f"no `mkd train` line of scripts/demo.sh writes {ckpt}"
        cfg, tokens = runs[run_dir]
        if ckpt == run_dir:  # the run's last checkpoint
            assert tokens == t["tokens"] and not cfg.train.stop_at_step, t["name"]
        else:  # a budget checkpoint the run passes
            assert ckpt.endswith(f"tokens_{t['tokens']}") and t["tokens"] in cfg.checkpoint.save_at_tokens, t["name"]
            assert t["tokens"] <= tokens, t["name"]
        assert load_config(t["model"], purpose="model").model == cfg.model, t["name"]
        trained[t["name"]] = t["tokens"]
    # the finding's two sides: a small teacher trained far longer than the student, a weak one shorter
    assert max(trained.values()) >= 4 * student_tokens and min(trained.values()) < student_tokens
