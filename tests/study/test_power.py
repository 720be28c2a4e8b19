"""`mkd power` (study/power.py): minimum detectable effects from a sweep's design, checked against
closed forms computed here, against the report's own paired fit, by simulation, and on study v3's
two sweeps against the MDEs issue 42 quotes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as t_dist

from megatron_kd.cli.main import main
from megatron_kd.study.paired import PairedFit
from megatron_kd.study.power import DesignMatrix, Noise, StudentDesign, designs_of, smallest_spearman_p, student_power
from megatron_kd.study.power_report import noise_from, power_refusal, power_summary, sweep_power
from megatron_kd.study.sweep import expand, load_sweep

SHORT, LONG = "recipes/sweeps/cpu-study-v3-short.yaml", "recipes/sweeps/cpu-study-v3-long.yaml"


def hand_design(seeds: int, alphas=(0.5,), teachers=("t",)) -> StudentDesign:
    """A baseline and one KD point per teacher and α, every point at every seed."""
    d = StudentDesign("s", "s__baseline", {"s__baseline": list(range(seeds))})
    for t in teachers:
        for a in alphas:
            key = f"s__{t}__a{a}"
            d.seeds_of[key] = list(range(seeds))
            d.kd.append({"key": key, "teacher": t, "alpha": a, "control": False, "model": None, "tokens": None})
    return d


def row(result: dict, test: str, s: str) -> dict:
    return next(r for r in result["rows"] if r["test"].startswith(test) and r["set"] == s)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_two_point_paired_design_gives_the_analytic_mde(n):
    sigma = 0.016
    res = student_power(hand_design(n), Noise(sigma), ["indomain"])
    df = n - 1  # 2n runs, n + 1 parameters (two points, n seeds, one reference)
    analytic = (t_dist.ppf(0.975, df) + t_dist.ppf(0.8, df)) * sigma * math.sqrt(2 / n)
    got = row(res, "per-point gain", "indomain")
    assert got["df"] == df
    assert got["mde"] == pytest.approx(analytic, rel=0.02)


def test_claim1_family_and_holm_give_the_analytic_mde():
    """One weak teacher at 3 α, scored on 2 sets: 6 comparisons; testable claims 1 and 3 (one
    teacher: no axis, no Spearman), so Holm's first step is 0.05 / 2, then 1/6 of it each."""
    n, sigma, sigma_ood = 4, 0.016, 0.023
    res = student_power(hand_design(n, alphas=(0.2, 0.5, 0.8)), Noise(sigma, sigma_ood), ["indomain", "ood"])
    df = 4 * n - (4 + n - 1)
    assert res["holm_m"] == 2 and res["df"] == df
    a = 0.05 / 2 / 6
    for s, sd in (("indomain", sigma), ("ood", sigma_ood)):
        analytic = (t_dist.ppf(1 - a, df) + t_dist.ppf(0.8, df)) * sd * math.sqrt(2 / n)
        assert row(res, "claim 1", s)["mde"] == pytest.approx(analytic, rel=0.02)


def test_design_variance_matches_the_report_fit_on_an_unbalanced_design():
    """A point missing a seed: the design's SE equals the report's PairedFit SE / sigma."""
    d = hand_design(4, alphas=(0.2, 0.5))
    d.seeds_of["s__t__a0.5"] = [0, 1]
    rng = np.random.default_rng(0)
    cells = {k: {s: 4.0 + rng.normal(0, 0.02) for s in ss} for k, ss in d.seeds_of.items()}
    fit = PairedFit(cells, "s__baseline")
    m = DesignMatrix(d)
    for key in ("s__t__a0.2", "s__t__a0.5"):
        e = fit.gain(key)
        factor, df = m.gain_factor(key)
        assert df == fit.df
        assert factor == pytest.approx(e.se / fit.sigma, rel=1e-9)


def test_a_planted_effect_at_the_mde_is_found_80_percent_of_the_time():
    """Study v3's short design: a weak teacher's gain equal to claim 1's printed MDE, tested by
    the report's PairedFit at the per-comparison level, in 800 synthetic sweeps."""
    points = expand(load_sweep(SHORT))
    design = designs_of(points)["cpu-tiny"]
    sigma = 0.016
    res = student_power(design, Noise(sigma, 0.023), ["indomain", "ood_dev", "ood_test"])
    target = row(res, "claim 1", "indomain")
    key = design.kd[0]["key"]
    rng = np.random.default_rng(1)
    seeds = sorted({s for ss in design.seeds_of.values() for s in ss})
    found, reps = 0, 800
    for _ in range(reps):
        seed_effect = dict(zip(seeds, rng.normal(0, 0.013, len(seeds))))
        cells = {k: {s: 4.35 + seed_effect[s] + rng.normal(0, sigma) - (target["mde"] if k == key else 0.0)
                     for s in ss} for k, ss in design.seeds_of.items()}
        p = PairedFit(cells, design.baseline).gain(key).p_greater()
        found += p < target["alpha"]
    assert abs(found / reps - 0.8) < 0.07


@pytest.mark.parametrize("sweep, sigma, quoted", [
    (SHORT, (0.016, 0.023), {"indomain": 0.065, "ood_test": 0.094}),
    (LONG, (0.039, 0.037), {"indomain": 0.17})])  # the long regime's own residual sd (docs/STUDY.md)
def test_study_v3_mdes_agree_with_the_issue(sweep, sigma, quoted):
    [res] = sweep_power(load_sweep(sweep), Noise(*sigma))
    for s, mde in quoted.items():
        assert row(res, "claim 1", s)["mde"] == pytest.approx(mde, rel=0.10)
    assert any("censored" in w and "0.8 < 1" in w for w in res["warnings"])
    assert any("bootstrap" in w for w in res["warnings"])


def test_long_v3_claim4_cannot_reach_holm_with_three_teachers():
    [res] = sweep_power(load_sweep(LONG), Noise(0.016, 0.023))
    assert row(res, "claim 4", "indomain")["smallest_p"] == pytest.approx(1 / 6)
    assert any("claim 4 cannot hold" in w for w in res["warnings"])


def test_one_seed_per_kd_point_is_flagged():
    d = hand_design(1)
    d.seeds_of["s__baseline"] = [0, 1]
    res = student_power(d, Noise(0.016), ["indomain"])
    assert res["df"] == 0 and any("no residual degrees of freedom" in w for w in res["warnings"])


def test_without_residual_df_power_prices_the_reports_fallback_errors():
    """One seed per KD point: the SE factor is the report's (paired.PairedFit) over the baselines'
    seed spread: the same-seed contrast where the seeds pair, the difference of means where not."""
    d = StudentDesign("s", "b", {"b": [1, 2], "k": [1], "far": [3]})
    fit = PairedFit({"b": {1: 4.00, 2: 4.02}, "k": {1: 3.95}, "far": {3: 3.9}}, "b")
    sd = np.std([4.00, 4.02], ddof=1)
    for key in ("k", "far"):
        factor, df = DesignMatrix(d).gain_factor(key)
        assert (factor * sd, df) == (pytest.approx(fit.gain(key).se), fit.gain(key).df)


def test_power_summary_is_the_console_table():
    lines = power_summary(load_sweep(SHORT), 0.016)
    assert any(line.lstrip().startswith("claim 1") for line in lines)
    assert any("censored" in line for line in lines)


def test_cli_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "power.json"
    assert main(["power", SHORT, "--sigma", "0.016", "--sigma-ood", "0.023", "--json-out", str(out)]) == 0
    assert "claim 1" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["students"][0]["df"] == 15  # the fixed-α family's own: the unigram control's runs lend none


def test_claims_are_powered_in_the_fixed_alpha_family_as_the_report_reads_them():
    """Controls and α schedules have their own noise in the report (paired.NoiseFamilies): they
    add no residual degrees of freedom to the claims, and a prior table's noise is the fixed-α
    family's sd (docs/study/results.csv: 0.0111 in-domain over 54 df, where the pooled sd is
    0.0139 over 72)."""
    d = hand_design(3, alphas=(0.2, 0.5))
    before = student_power(d, Noise(0.016), ["indomain"])
    for key, family in (("s__t__sched", "scheduled α"), ("s__unigram__a0.5", "controls")):
        d.seeds_of[key], d.family_of[key] = [0, 1, 2], family
    after = student_power(d, Noise(0.016), ["indomain"])
    assert after["df"] == before["df"] == 4 and row(after, "claim 1", "indomain") == row(before, "claim 1", "indomain")
    assert DesignMatrix(d).df == 8  # pooled, the two other families would have lent 4 more
    noise = noise_from(Path(__file__).parents[2] / "docs" / "study" / "results.csv")
    assert noise.in_domain == pytest.approx(0.0111, abs=5e-5) and "(54 df)" in noise.source


def test_cli_estimates_the_noise_from_a_results_table(capsys):
    assert main(["power", SHORT, "--from", "docs/study/results.csv"]) == 0
    assert "residual sd of results.csv" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[SHORT], [SHORT, "--sigma", "0"], [SHORT, "--sigma", "nan"],
                                  [SHORT, "--sigma", "0.01", "--from", "docs/study/results.csv"],
                                  [SHORT, "--from", "/no/such/table.csv"], ["/no/such.yaml", "--sigma", "0.01"],
                                  [SHORT, "--sigma", "0.01", "--level", "1.5"]])
def test_bad_input_is_one_line_and_exit_2(argv, capsys):
    try:
        rc = main(["power", *argv])
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mkd: error:") and "\n" not in err


@pytest.mark.parametrize("sizes", [(1, 1, 1), (1, 1, 1, 2), (2, 2, 3), (1, 1, 2, 2), (2, 2, 2), (1, 1, 1, 1, 1)])
def test_smallest_spearman_p_is_scipys_exact_permutation_p(sizes):
    """The best monotone order of k teachers over len(sizes) levels (the most even split):
    scipy's exact permutation test of Spearman's rho gives the closed form's p."""
    from scipy.stats import permutation_test, spearmanr

    k = sum(sizes)
    y = np.repeat(np.arange(len(sizes)), sizes).astype(float)
    x = np.arange(k, dtype=float)
    p = permutation_test((y,), lambda v: spearmanr(x, v).statistic, permutation_type="pairings",
                         alternative="greater", n_resamples=np.inf).pvalue
    assert smallest_spearman_p(k, len(sizes)) == pytest.approx(p, rel=1e-9)


def test_v3_short_grid_limits_claim4_below_holm():
    """Five real teachers but four possible best α (0, 0.2, 0.5, 0.8): a tie is forced, so the
    smallest p is 2!/5! = 1/60 > 0.05/4."""
    [res] = sweep_power(load_sweep(SHORT), Noise(0.016, 0.023))
    assert row(res, "claim 4", "indomain")["smallest_p"] == pytest.approx(1 / 60)
    assert any("claim 4 cannot hold" in w for w in res["warnings"])


def test_required_power_is_refused_in_one_line():
    results = sweep_power(load_sweep(SHORT), Noise(0.016, 0.023))
    assert power_refusal(results, {"claim 1": 0.1}) is None
    line = power_refusal(results, {"claim 1": 0.03, "claim 4": True})
    assert "\n" not in line and "claim 1" in line and "claim 4" in line and "0.068" in line
