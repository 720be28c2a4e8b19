"""kd.auto in a recipe: parsed, defaults, and one-line refusals of what it cannot combine with."""

import pytest

from megatron_kd.config import load_config
from megatron_kd.errors import ConfigError

AUTO = ["kd.alpha=1.0", "kd.auto.enabled=true"]


def test_kd_auto_parses_with_its_defaults_and_tau():
    cfg = load_config("train/tiny-mock", AUTO)
    assert cfg.kd.auto.enabled and cfg.kd.auto.tau == 1.0 and cfg.kd.alpha == 1.0
    assert load_config("train/tiny-mock", [*AUTO, "kd.auto.tau=0.5", "kd.temperature=2.0"]).kd.auto.tau == 0.5
    assert not load_config("train/tiny-mock").kd.auto.enabled


@pytest.mark.parametrize("overrides, message", [
    (["kd.alpha=0", "kd.auto.enabled=true"], r"kd.auto.enabled .*kd.alpha.*: set kd.alpha > 0"),
    ([*AUTO, "kd.auto.tau=0"], r"kd.auto.tau must be > 0 and finite"),
    ([*AUTO, "kd.alpha_schedule.kind=cosine"], r"kd.auto.enabled sets the KD weight .*kind=constant"),
    ([*AUTO, "kd.mix=magnitude_matched"], r"kd.mix=magnitude_matched rescales the whole batch"),
    (["kd.auto.enable=true"], r"unknown key 'kd.auto.enable'.*did you mean 'kd.auto.enabled'"),
    (["kd.auto.tau=soft"], r"kd.auto.tau = 'soft' .* has the wrong type: expected float"),
])
def test_kd_auto_refusals_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config("train/tiny-mock", overrides)
    assert "\n" not in str(err.value)
