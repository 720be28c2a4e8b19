"""The launch's checkpoint checks (training/preflight.py) verify each checkpoint the run starts
from once and hand the states down: the resume point the launch's Checkpointer names (not with
--overwrite, which may discard it) and checkpoint.load. What verification finds in a damaged
checkpoint: tests/cli/test_bad_values_and_damaged_files.py."""

from __future__ import annotations

import pytest

from megatron_kd.checkpoint.checkpointer import Checkpointer
from megatron_kd.checkpoint.refs import read_state
from megatron_kd.config import load_config
from megatron_kd.errors import ConfigError
from megatron_kd.training import preflight
from megatron_kd.training.preflight import check_start_checkpoints
from tests.checkpoint.test_checkpointer import write_run_checkpoint


def test_start_checkpoints_are_verified_once_and_handed_down(tmp_path, monkeypatch):
    verified_now = []

    def verify(path):  # the state file only: the files' checks are verify_checkpoint's own tests
        verified_now.append(path)
        return read_state(path)

    monkeypatch.setattr(preflight, "verify_checkpoint", verify)
    seed = write_run_checkpoint(load_config("train/tiny-mock", [f"run.dir={tmp_path / 'seed'}"]), 0, kind="init")
    cfg = load_config("train/tiny-mock", [f"run.dir={tmp_path / 'run'}", f"checkpoint.load={seed}"])
    ck = Checkpointer(cfg)
    assert list(check_start_checkpoints(cfg, ck, overwrite=False)) == [seed]  # nothing to resume yet
    resume = write_run_checkpoint(cfg, 3)
    verified_now.clear()
    states = check_start_checkpoints(cfg, ck, overwrite=False)
    assert verified_now == [resume, seed] and list(states) == [resume, seed]
    assert states[resume]["step"] == 3 and states[seed]["kind"] == "init"
    assert list(check_start_checkpoints(cfg, ck, overwrite=True)) == [seed]

    missing = load_config("train/tiny-mock", [f"run.dir={tmp_path / 'other'}", f"checkpoint.load={tmp_path / 'none'}"])
    with pytest.raises(ConfigError, match="checkpoint.load .* does not exist"):
        check_start_checkpoints(missing, Checkpointer(missing), overwrite=False)
