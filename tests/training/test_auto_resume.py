"""kd.auto resumes exactly: its advantage trend (the running state that sets each micro-batch's α)
is saved per rank with the checkpoint and restored on resume; a checkpoint without it resumes
with a warning, from α = kd.alpha; a damaged one is refused in one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from megatron_kd.checkpoint.checkpointer import Checkpointer, CheckpointInfo
from megatron_kd.config import load_config
from megatron_kd.errors import ConfigError
from tests.conftest import corpus_overrides
from tests.distributed import run_distributed
from tests.helpers import auto_objective

AUTO = ["teacher.unigram=true", "kd.alpha=0.8", "kd.auto.enabled=true", "kd.auto.tau=2.0", "train.steps=4",
        "logging.tensorboard=false", "checkpoint.save_at_end=false", "logging.eval_interval=0"]


def uninterrupted_and_resumed(workdir: str, overrides: list[str]) -> dict:
    """In one process, as `mkd train` runs on a rank: the run to its end, and the same run stopped
    after step 2 (its checkpoint saved) then resumed to the end; each run's metrics rows."""
    from megatron_kd.runtime.distributed import init_distributed, seed_everything, shutdown
    from megatron_kd.training.loop import run_training

    out = {}
    for name, stop in (("uninterrupted", "null"), ("split", "2"), ("split", "null")):
        cfg = load_config("train/tiny-mock", [*overrides, f"run.dir={Path(workdir) / name}",
                                              f"train.stop_at_step={stop}"])
        if not out:
            init_distributed(cfg.parallel, cfg.run.seed)
        seed_everything(cfg.run.seed)  # as a new launch starts
        result = run_training(cfg, Checkpointer(cfg))
        out[name] = {"status": result.status,
                     "rows": [json.loads(line) for line in (Path(workdir) / name / "metrics.jsonl").open()]}
    out["saved"] = json.loads((Path(workdir) / "split/checkpoints/step_0000002/mkd_state.json").read_text())
    shutdown()
    return out


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("layout", ["dp2", "pp2"])
def test_a_resumed_kd_auto_run_continues_exactly(text_corpus, tmp_path, layout):
    """Two data-parallel ranks: the trend sums both ranks' micro-batches, so both save the same one.
    Two pipeline stages: the last, which computes the loss, keeps the trend; the first has none."""
    stages = ["parallel.pp=2"] if layout == "pp2" else []
    r, _ = run_distributed("tests.training.test_auto_resume:uninterrupted_and_resumed", 2, tmp_path,
                           overrides=[*corpus_overrides(text_corpus), *AUTO, *stages])
    whole, split = r["uninterrupted"]["rows"], r["split"]["rows"]
    assert r["split"]["status"] == "completed" and [m["step"] for m in split] == [1, 2, 3, 4]
    first, saved = r["saved"]["kd_objective"]  # one per rank
    assert first == saved if layout == "dp2" else first["auto_trend"]["mean"] is None
    assert saved["auto_trend"]["mean"] > 0  # the unigram teacher leads an untrained student
    # a trend started again would weigh step 3's first micro-batch at kd.alpha: its mean α and
    # every loss after it would differ
    assert whole[2]["kd/alpha_effective"] < 0.75
    for a, b in zip(whole, split):
        for key in ("loss", "lm_loss", "kd_loss", "grad_norm", "kd/alpha_effective", "kd/teacher_advantage"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])


def _info(state: dict) -> CheckpointInfo:
    return CheckpointInfo(Path("/runs/r/checkpoints/step_0000002"), 2, 8, 256, "periodic", True, state)


def _checkpointer(*overrides: str) -> Checkpointer:
    return Checkpointer(load_config("train/tiny-mock", ["run.dir=/nonexistent/run", *overrides]))


def test_the_saved_trend_is_restored_and_a_missing_one_warns_a_kd_auto_run(caplog):
    layout = {"parallel": {"tp": 1, "pp": 1, "vpp": 1}}
    auto = _checkpointer("kd.alpha=0.8", "kd.auto.enabled=true")
    resumed = auto_objective(None)
    auto._restore_objective(resumed, _info({**layout, "kd_objective": [auto_objective(0.25).state_dict()]}))
    assert resumed.trend.mean == 0.25
    # saved at another layout (two pipeline stages: the first has no trend): the one that moved
    resumed = auto_objective(None)
    other = {"parallel": {"tp": 1, "pp": 2, "vpp": 1},
             "kd_objective": [auto_objective(None).state_dict(), auto_objective(0.5).state_dict()]}
    auto._restore_objective(resumed, _info(other))
    assert resumed.trend.mean == 0.5
    with caplog.at_level(logging.WARNING, logger="megatron_kd.checkpoint"):
        fresh = auto_objective(None)
        auto._restore_objective(fresh, _info(layout))  # saved before the state was recorded
        _checkpointer("kd.alpha=0.8")._restore_objective(auto_objective(None), _info(layout))  # a fixed α: quiet
    assert fresh.trend.mean is None
    [warning] = [r.getMessage() for r in caplog.records]
    assert "holds no KD objective state" in warning and "kd.alpha=0.8" in warning


@pytest.mark.parametrize("saved", [{"kd_objective": {"auto_trend": {"mean": 0.1}}},
                                   {"kd_objective": [{"auto_trend": {"mean": "x"}}]}])
def test_a_damaged_saved_trend_is_refused_in_one_line(saved):
    with pytest.raises(ConfigError, match=r"checkpoint /runs/r/checkpoints/step_0000002.*resume from|"
                                          r"checkpoint /runs/r/checkpoints/step_0000002 is damaged"):
        _checkpointer("kd.alpha=0.8", "kd.auto.enabled=true")._restore_objective(
            auto_objective(None), _info({"parallel": {"tp": 1, "pp": 1, "vpp": 1}, **saved}))
