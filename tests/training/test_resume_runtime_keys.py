"""Keys that do not change what a run computes do not make a resumed run "a different run":
raising teacher.cache_wait_s after a streamed cache timed out resumes (the refusal asked for
--overwrite, which discards the checkpoints); keys that change the trained weights still refuse."""

import pytest

from megatron_kd.config import dump_config, load_config
from megatron_kd.errors import ConfigError
from megatron_kd.training.run_dir import check_run_dir


def _started_run(tmp_path):
    cfg = load_config("train/tiny-mock", [f"run.dir={tmp_path / 'run'}", "teacher.cache_wait_s=60"])
    dump_config(cfg, tmp_path / "run" / "config.yaml")
    (tmp_path / "run" / "checkpoints" / "step_0000002").mkdir(parents=True)
    return cfg


@pytest.mark.parametrize("section,key,value", [("teacher", "cache_wait_s", 3600.0),
                                               ("data", "trust_unverified", True)])
def test_a_runtime_key_resumes(tmp_path, section, key, value):
    cfg = _started_run(tmp_path)
    setattr(getattr(cfg, section), key, value)
    check_run_dir(cfg, overwrite=False)  # the same run: resumes
    check_run_dir(cfg, overwrite=True)  # and --overwrite has nothing to discard
    assert (tmp_path / "run" / "checkpoints" / "step_0000002").is_dir()


@pytest.mark.parametrize("section,key,value", [("kd", "alpha", 0.25), ("train", "lr", 0.0123),
                                               ("data", "seed", 99), ("teacher", "cache", "/c")])
def test_a_key_that_changes_the_weights_is_still_another_run(tmp_path, section, key, value):
    cfg = _started_run(tmp_path)
    setattr(getattr(cfg, section), key, value)
    with pytest.raises(ConfigError, match=f"holds a different run \\({section}.{key}"):
        check_run_dir(cfg, overwrite=False)
