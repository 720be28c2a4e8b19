"""Mixture-of-experts models (model.moe, parallel.ep): the config's checks, and KD with experts on
both sides through the CLI: an MoE teacher trained at EP=2 teaches an MoE student online at EP=2,
and through a teacher cache written at EP=2 (every data-parallel rank in lockstep) at EP=1, to
the same losses (the student's initial weights layout-free, cache = online)."""

from __future__ import annotations

import pytest

from megatron_kd.config.loader import load_config
from megatron_kd.config.validate import moe_layers
from megatron_kd.errors import ConfigError
from tests.helpers import mkd, read_metrics

RUN = ["logging.tensorboard=false", "checkpoint.save_at_end=false", "train.lr=3e-3"]
MOE = ["model.moe.num_experts=4", "model.moe.ffn_hidden_size=128", "model.moe.aux_loss_coeff=0.01"]


def _config(*overrides):
    return load_config("train/tiny-mock", list(overrides))


@pytest.mark.parametrize("overrides, text", [
    (["parallel.ep=2"], "model.moe.num_experts is 0 (a dense model)"),
    ([*MOE, "parallel.ep=3"], "num_experts=4 is not divisible by parallel.ep=3"),
    ([*MOE, "model.moe.router_topk=5"], "router_topk must be in [1, num_experts=4]"),
    ([*MOE, "model.moe.layer_freq=[1,0,1]"], "a list of 2 0/1 flags"),
    ([*MOE, "model.moe.capacity_factor=0"], "capacity_factor must be > 0"),
    ([*MOE, "model.moe.router_topk=1"], "needs model.moe.pre_softmax=true"),
    ([*MOE, "model.moe.score_function=sigmoid", "model.moe.pre_softmax=true"], "pre_softmax applies to softmax"),
])
def test_moe_config_errors_are_one_line(overrides, text):
    with pytest.raises(ConfigError, match=None) as info:
        _config(*overrides)
    assert text in str(info.value) and "\n" not in str(info.value)


def test_a_dense_student_may_use_ep_for_its_teacher_and_layers_follow_layer_freq():
    assert _config("parallel.ep=2", "teacher.model=models/tiny-moe").parallel.ep == 2  # checked again at launch
    assert moe_layers(_config(*MOE, "model.moe.layer_freq=[0,1]").model) == [False, True]
    assert moe_layers(_config(*MOE, "model.moe.layer_freq=2").model) == [True, False]
    assert moe_layers(_config().model) == [False, False]


@pytest.mark.slow
@pytest.mark.multiproc
def test_moe_teacher_and_student_at_ep1_ep2_and_through_a_cache(tmp_path):
    teacher = tmp_path / "teacher"
    mkd("train", "train/tiny-mock", *RUN, *MOE, "train.steps=3", "checkpoint.save_at_end=true", "parallel.ep=2",
        "--nproc", 2, f"run.dir={teacher}", timeout=600)
    kd = [*RUN, *MOE, "train.steps=4", f"teacher.checkpoint={teacher}", "kd.alpha=0.5", "kd.temperature=2.0"]
    mkd("train", "train/tiny-mock", *kd, "parallel.ep=2", "--nproc", 2, f"run.dir={tmp_path / 'ep2'}", timeout=600)
    cache = tmp_path / "cache"
    r = mkd("teacher-cache", "train/tiny-mock", *kd, "parallel.ep=2", "--nproc", 2, "--out", cache, "--top-k", "all",
            "--shard-rows", 6, timeout=600)  # 16 samples: shards of 6, 6 and 4 rows over 2 ranks
    assert "3 shards" in r.stdout
    # the student at EP=1 from the cache: the EP=2 student's losses (layout-free, and cache = online)
    mkd("train", "train/tiny-mock", *kd, f"teacher.cache={cache}", f"run.dir={tmp_path / 'ep1'}", timeout=600)
    ep2, ep1 = read_metrics(tmp_path / "ep2"), read_metrics(tmp_path / "ep1")
    assert len(ep1) == 4 and ep1[-1]["kd_loss"] > 0
    for key in ("loss", "lm_loss", "kd_loss"):
        assert max(abs(a[key] - b[key]) for a, b in zip(ep1, ep2)) < 1e-5, key


def test_active_parameters_and_flops_count_what_a_token_uses():
    from megatron_kd.models.flops import flop_params
    from megatron_kd.models.params import count_parameters

    dense, moe = _config().model, load_config("models/tiny-moe", purpose="model").model
    c = count_parameters(moe)
    h, f, e, k = 64, 128, 4, 2
    assert c.experts == 2 * e * 3 * h * f and c.total - c.active == 2 * (e - k) * 3 * h * f
    # top-2 of experts half the dense FFN: a token's matmuls are the dense model's plus the router's
    assert flop_params(moe, 32) - flop_params(dense, 32) == 2 * e * h
