"""`mkd sweep` with `power:` in the sweep: the design's power before anything runs, and a refusal
when a test the sweep requires power for cannot reach it (`--no-power-check` overrides)."""

import pytest
import yaml

from tests.helpers import mkd_in_process

V3_SHORT = "recipes/sweeps/cpu-study-v3-short.yaml"


def _sweep(tmp_path, power):
    from tests.distributed import REPO

    spec = yaml.safe_load((REPO / V3_SHORT).read_text())
    spec.update(out=str(tmp_path / "out"), power=power)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_sweep_that_cannot_reach_its_required_power_is_refused_before_anything_is_written(tmp_path, capsys):
    path = _sweep(tmp_path, {"sigma": 0.016, "sigma_ood": 0.023, "require": {"claim 1": 0.03}})
    rc, out, err = mkd_in_process(capsys, "sweep", str(path))
    assert rc == 2 and "claim 1: a weak teacher's gain" in out  # the summary came first
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1 and "detects 0.068 nats, not 0.03" in errors[0] and "--no-power-check" in errors[0]
    assert not (tmp_path / "out").exists()


def test_no_power_check_launches_anyway_and_a_reachable_requirement_passes(tmp_path, capsys):
    path = _sweep(tmp_path, {"sigma": 0.016, "require": {"claim 1": 0.03}})
    rc, out, err = mkd_in_process(capsys, "sweep", str(path), "--no-power-check")
    assert rc == 0, err
    assert "--no-power-check: launching anyway" in out and (tmp_path / "out" / "recipes").is_dir()
    path = _sweep(tmp_path, {"sigma": 0.016, "require": {"claim 1": 0.2}})
    rc, out, err = mkd_in_process(capsys, "sweep", str(path))
    assert rc == 0 and "MDE" in out, err


@pytest.mark.parametrize("power", [0.016, {"sigma": -1}, {"sigma": float("nan")}, {"sigma": 0.01, "extra": 1},
                                   {"sigma": 0.01, "require": {"claim 1": "big"}}, {"sigma": True}])
def test_a_malformed_power_key_is_one_line(tmp_path, capsys, power):
    rc, out, err = mkd_in_process(capsys, "sweep", str(_sweep(tmp_path, power)))
    assert rc == 2 and "`power` must be" in err and len(err.strip().splitlines()) == 1
