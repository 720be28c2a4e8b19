"""Registered primary contrasts (study/primary.py, claims_primary.py): a sweep's `primary:` block
names one test per claim; the report reads it (no Bonferroni within the claim, the other
comparisons secondary), `mkd power` prices it (checked against a hand computation here), and a
wrong block is one line naming the key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import t as t_dist

from megatron_kd.cli.main import main
from megatron_kd.errors import ConfigError
from megatron_kd.study.analysis import analyse
from megatron_kd.study.power import Noise, student_power
from megatron_kd.study.primary import parse_primary, registered
from megatron_kd.study.report import report_json
from megatron_kd.study.sweep import expand, load_sweep
from megatron_kd.study.sweep_spec import grid_teacher_names
from tests.study.synthetic_v3 import SETS, v3_rows
from tests.study.test_power import hand_design, row

ROOT = Path(__file__).parents[2]
SHORT = ROOT / "recipes" / "sweeps" / "cpu-study-v3-short.yaml"
WEAK = ("small@0.3ep", "micro@4ep")  # v3's teachers worse in-domain than the baseline (4.62, 4.50 > 4.348)
PRIMARY = {"claim 1": {"teachers": "weak", "alpha": [0.2, 0.5], "set": "indomain"},
           "claim 2": {"axis": ["tiny@1ep", "tiny@4ep"]}, "claim 3": {"set": "ood_test"}}


def v3_with(tmp_path: Path, primary) -> Path:
    """Study v3's short sweep with a `primary:` block."""
    spec = yaml.safe_load(SHORT.read_text())
    spec["primary"] = primary
    path = tmp_path / "v3.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return path


def claims_of(rows, primary=PRIMARY) -> dict:
    with registered(primary):
        return {c["claim"]: c for c in analyse(rows, list(SETS), n_boot=0)["students"]["s"]["claims"]}


@pytest.mark.parametrize("n, k", [(3, 2), (4, 1), (6, 2)])
def test_registered_mean_gain_mde_is_the_hand_computation(n, k):
    """A balanced design: baseline and teachers a, b at α 0.1 / 0.2, n seeds. The registered mean
    over k teachers x 2 α (P = 5 points in the fit): Var = σ²/n (1 + 1/(2k)) (the seed effects
    cancel), df = (P - 1)(n - 1); one test at Holm's first step over m = 2 claims (1 and 3)."""
    sigma = 0.016
    d = hand_design(n, alphas=(0.1, 0.2), teachers=("a", "b"))
    reg = parse_primary({"claim 1": {"teachers": "weak", "alpha": [0.1, 0.2], "set": "indomain"}}, "test")
    res = student_power(d, Noise(sigma, 0.023), ["indomain", "ood"], weak=k, primary=reg)
    df = 4 * (n - 1)
    a = 0.05 / 2
    hand = (t_dist.ppf(1 - a, df) + t_dist.ppf(0.8, df)) * sigma * math.sqrt((1 + 1 / (2 * k)) / n)
    got = row(res, "claim 1 (registered)", "indomain")
    assert got["comparisons"] == 1 and got["df"] == df and got["alpha"] == pytest.approx(a)
    assert got["mde"] == pytest.approx(hand, rel=0.02)
    assert not any(r["test"].startswith("claim 1:") for r in res["rows"])  # the Bonferroni family is gone


def test_the_registered_mde_is_below_the_bonferroni_one_on_study_v3(tmp_path):
    """v3 short: the mean over the two weak teachers at α 0.2/0.5 needs less than one weak
    comparison after Bonferroni over 2 teachers x 3 α x 2 sets."""
    from megatron_kd.study.power_report import sweep_power

    [plain] = sweep_power(load_sweep(SHORT), Noise(0.016, 0.023), weak=2)
    [reg] = sweep_power(load_sweep(v3_with(tmp_path, PRIMARY)), Noise(0.016, 0.023), weak=2)
    assert row(reg, "claim 1 (registered)", "indomain")["mde"] < 0.6 * row(plain, "claim 1", "indomain")["mde"]
    assert row(reg, "claim 3 (registered)", "ood_test − indomain")["comparisons"] == 1
    assert row(reg, "claim 2 (registered)", "indomain")["comparisons"] == 2  # reverses or saturates


def test_the_report_reads_the_registered_contrast_and_lists_the_rest_as_secondary():
    rng = np.random.default_rng(3)
    c = claims_of(v3_rows(rng, lambda t, a, s: 0.08 if t in WEAK and a in (0.2, 0.5) and s == "indomain" else 0.0))
    one = c[1]
    assert one["verdict"].startswith("holds") and "registered primary contrast" in one["why"]
    assert "small@0.3ep" in one["why"] and "micro@4ep" in one["why"] and "α ∈ {0.2, 0.5} on indomain" in one["why"]
    assert "secondary, uncorrected" in one["why"] and len(one["secondary"]) == 2 * 3 * 2  # weak x α x sets
    assert one["primary"]["p"] == one["p"] and one["p_holm"] <= 4 * one["p"]
    assert "registered primary contrast" in c[3]["why"] and c[3]["primary"]["contrast"].endswith("ood_test")
    # claims without an entry keep their multi-comparison test
    only3 = claims_of(v3_rows(rng), {"claim 3": {"set": "ood_test"}})
    assert only3[1]["statistic"].startswith("max one-sided t") and "registered" in only3[3]["statistic"]


def test_the_directional_verdict_reads_the_same_contrast():
    """The registered points hurt in-domain: "does not hold", with the contrast's own p."""
    rng = np.random.default_rng(4)
    c = claims_of(v3_rows(rng, lambda t, a, s: -0.08 if t in WEAK and a in (0.2, 0.5) and s == "indomain" else 0.0))
    assert c[1]["verdict"] == "does not hold" and c[1]["p_against"] < 1e-3 and c[1]["against"][0][0] == "does not hold"


@pytest.mark.parametrize("primary, said", [
    ("weak", "must be a mapping of claims"),
    ({"claim 5": {"set": "ood_test"}}, "unknown key 'claim 5'"),
    ({"claim 4": {"set": "ood_test"}}, "claim 4 is one test already"),
    ({"claim 1": {"teachers": "weak", "alpha": [0.2], "set": "indomain", "tail": "left"}}, "unknown key(s) ['tail']"),
    ({"claim 1": {"teachers": "weak", "set": "indomain"}}, "has no alpha"),
    ({"claim 1": {"teachers": "some", "alpha": [0.2], "set": "indomain"}}, "`weak` or a list of teacher names"),
    ({"claim 1": {"teachers": ["nobody"], "alpha": [0.2], "set": "indomain"}}, "teacher 'nobody' is not one"),
    ({"claim 1": {"teachers": ["unigram"], "alpha": [0.2], "set": "indomain"}}, "is a control"),
    ({"claim 1": {"teachers": "weak", "alpha": [0.3], "set": "indomain"}}, "α 0.3 is not one"),
    ({"claim 1": {"teachers": "weak", "alpha": [0.2, 0.2], "set": "indomain"}}, "0.2 is twice"),
    ({"claim 2": {"axis": ["tiny@1ep"]}}, "two or more distinct teacher names"),
    ({"claim 2": {"axis": ["tiny@1ep", "tiny@9ep"]}}, "teacher 'tiny@9ep' is not one"),
    ({"claim 3": {"set": 3}}, "the name of a validation set"),
])
def test_a_wrong_block_is_one_line_naming_the_key(tmp_path, primary, said):
    with pytest.raises(ConfigError) as e:
        load_sweep(v3_with(tmp_path, primary))
    assert said in str(e.value) and "\n" not in str(e.value) and str(v3_with(tmp_path, primary)) in str(e.value)


@pytest.mark.parametrize("entry, said", [
    ({"claim 3": {"set": "indomain"}}, "claim 3's set 'indomain' is not one of this design's out-of-distribution"),
    ({"claim 3": {"set": "ood_dev"}}, "is a dev set"),
    ({"claim 1": {"teachers": "weak", "alpha": [0.2], "set": "ood"}}, "claim 1's set 'ood' is not one"),
])
def test_power_refuses_an_unknown_set_in_one_line(tmp_path, capsys, entry, said):
    assert main(["power", str(v3_with(tmp_path, entry)), "--sigma", "0.016"]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and "\n" not in err


def test_the_report_refuses_names_its_runs_lack(capsys):
    """A registered block checked against a results table's own teachers (not the sweep file's)."""
    rows = v3_rows(np.random.default_rng(0))
    for primary, said in (({"claim 2": {"axis": ["tiny@1ep", "huge@1ep"]}}, "teacher 'huge@1ep' is not one"),
                          ({"claim 3": {"set": "wiki"}}, "set 'wiki' is not one")):
        with pytest.raises(ConfigError) as e:
            claims_of(rows, primary)
        assert said in str(e.value) and "\n" not in str(e.value)


def test_the_grid_teacher_names_are_those_the_points_carry():
    """sweep_spec names the teachers (to check `primary:` as the sweep loads) as expand does."""
    for path in sorted((ROOT / "recipes" / "sweeps").glob("*.yaml")):
        spec = load_sweep(path)
        assert grid_teacher_names(spec.get("grid") or {}) == {p.meta["teacher"] for p in expand(spec)
                                                               if p.meta.get("teacher")}, path.name


def test_report_cli_takes_the_block_from_a_sweep_file(tmp_path, capsys):
    assert main(["report", "--table", str(tmp_path / "none.csv"), "--primary", str(tmp_path / "no.yaml")]) == 2
    assert "no.yaml" in capsys.readouterr().err
    plain = tmp_path / "plain.yaml"
    spec = yaml.safe_load(SHORT.read_text())
    plain.write_text(yaml.safe_dump(spec))
    assert main(["report", "--table", str(tmp_path / "none.csv"), "--primary", str(plain)]) == 2
    assert "has no `primary:` block" in capsys.readouterr().err


def test_report_json_carries_the_registered_contrast_and_its_secondary_comparisons():
    rng = np.random.default_rng(3)
    rows = v3_rows(rng, lambda t, a, s: 0.08 if t in WEAK and a in (0.2, 0.5) and s == "indomain" else 0.0)
    with registered(PRIMARY):
        study = analyse(rows, list(SETS), n_boot=0)
    claims = {c["claim"]: c for c in json.loads(json.dumps(report_json(study, list(SETS))))["students"]["s"]["claims"]}
    assert claims[1]["primary"]["contrast"].startswith("the mean paired gain over the weak teachers")
    assert claims[1]["primary"]["p"] == claims[1]["p"] and len(claims[1]["secondary"]) == 2 * 3 * 2
    assert claims[3]["primary"]["contrast"].endswith("ood_test")
    assert "primary" not in claims[4]  # one test already: nothing registered


def _sweep_with(tmp_path: Path, primary) -> tuple[Path, Path]:
    """Study v3's short sweep with a `primary:` block, writing into tmp_path/sweep: (file, dir)."""
    path = v3_with(tmp_path, primary)
    spec = yaml.safe_load(path.read_text())
    spec["out"] = str(tmp_path / "sweep")
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return path, tmp_path / "sweep"


def _registered_while(monkeypatch, module) -> list:
    """What `module.cmd_report` sees registered when it runs (it records, reports nothing)."""
    from megatron_kd.study.primary import current

    seen = []
    monkeypatch.setattr(module, "cmd_report", lambda args: seen.append(current()) or 0)
    return seen


def test_a_sweep_directory_keeps_its_block_and_mkd_report_reads_it(tmp_path, monkeypatch, capsys):
    from megatron_kd.cli import study_commands
    from megatron_kd.cli.report_primary import with_registered_primary

    path, out = _sweep_with(tmp_path, {"claim 3": {"set": "ood_test"}})
    assert main(["sweep", str(path), "--only", "*baseline*", "--no-power-check"]) == 0
    assert json.loads((out / "primary.json").read_text()) == {"claim 3": {"set": "ood_test"}}
    seen = _registered_while(monkeypatch, study_commands)
    report = with_registered_primary(study_commands.cmd_report)  # as `mkd report` runs it
    report(type("A", (), {"sweep_dir": str(out), "primary": None})())
    assert seen[-1][0] == {"claim 3": {"set": "ood_test"}} and "primary.json" in seen[-1][1]
    report(type("A", (), {"sweep_dir": str(out), "primary": str(v3_with(tmp_path, PRIMARY))})())
    assert seen[-1] == (PRIMARY, f"--primary {tmp_path / 'v3.yaml'}")  # given explicitly, it wins
    # a sweep without the block writes null: an earlier block is not read any more
    plain, _ = _sweep_with(tmp_path, None)
    assert main(["sweep", str(plain), "--only", "*baseline*", "--no-power-check"]) == 0
    assert (out / "primary.json").read_text().strip() == "null"
    report(type("A", (), {"sweep_dir": str(out), "primary": None})())
    assert seen[-1] is None


def test_the_report_after_a_local_sweep_reads_its_registered_block(tmp_path, monkeypatch):
    from megatron_kd.cli import study_commands
    from megatron_kd.study import sweep_local, sweep_teachers

    path, _ = _sweep_with(tmp_path, PRIMARY)
    monkeypatch.setattr(sweep_local, "run_local", lambda *a: None)
    monkeypatch.setattr(sweep_teachers, "evaluate_teachers", lambda spec: {})
    seen = _registered_while(monkeypatch, study_commands)
    assert main(["sweep", str(path), "--local", "--no-power-check"]) == 0
    assert seen == [(PRIMARY, f"sweep {path}")]
