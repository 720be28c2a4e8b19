"""The report's statistics and its reading of the paper's claims, on synthetic sweeps with known
numbers (study/stats.py, study/claims.py, study/analysis.py)."""

import math

import pytest

from megatron_kd.study.analysis import analyse, markdown
from megatron_kd.study.stats import band, fit_quadratic, gain, spearman

SEED_NOISE = [-0.01, 0.0, 0.01]  # three seeds: sd 0.01, standard error 0.00577


def _rows(base_id=3.0, base_ood=4.0, teachers=None, seeds=SEED_NOISE):
    """Rows of a synthetic sweep: one student, its baseline, and teachers
    {name: (teacher id loss, tokens, params, {alpha: (id gain, ood gain)})}."""
    rows = []
    for i, e in enumerate(seeds):
        rows.append({"name": f"base{i}", "student": "s", "teacher": None, "alpha": 0.0, "seed": i,
                     "val": {"indomain": base_id + e, "ood": base_ood + e}, "student_params": 1000})
    for t, (t_loss, tokens, params, per_alpha) in (teachers or {}).items():
        for a, (g_id, g_ood) in per_alpha.items():
            for i, e in enumerate(seeds):
                rows.append({"name": f"{t}-a{a}-{i}", "student": "s", "teacher": t, "alpha": a,
                             "temperature": 1.0, "kind": "forward_kl", "seed": i,
                             "val": {"indomain": base_id - g_id + e, "ood": base_ood - g_ood + e},
                             "teacher_val": {"indomain": t_loss, "ood": t_loss + 1}, "teacher_tokens": tokens,
                             "teacher_params": params, "student_params": 1000})
    return rows


def test_band_gain_and_the_noise_rule():
    b = band([2.0, 2.1, 2.2, 2.3])
    assert b.mean == pytest.approx(2.15) and b.n == 4
    assert b.se == pytest.approx(math.sqrt(((0.15**2 + 0.05**2) * 2) / 3) / 2)
    base = band([3.0 + e for e in SEED_NOISE])
    helps = gain({"val": {"x": band([2.9 + e for e in SEED_NOISE])}}, base, "x")
    assert helps["gain"] == pytest.approx(0.1) and helps["verdict"] == "helps"
    assert helps["se"] == pytest.approx(math.hypot(0.01 / math.sqrt(3), 0.01 / math.sqrt(3)))
    noise = gain({"val": {"x": band([2.99 + e for e in SEED_NOISE])}}, base, "x")
    assert noise["verdict"] == "within noise"  # 0.01 < 2 x 0.0082
    hurts = gain({"val": {"x": band([3.05 + e for e in SEED_NOISE])}}, base, "x")
    assert hurts["verdict"] == "hurts"
    one_seed = gain({"val": {"x": band([2.9])}}, band([3.0]), "x")
    assert one_seed["verdict"] == "unknown" and one_seed["se"] is None
    # one seed at the point: the baselines' seed spread stands in for its standard error
    mixed = gain({"val": {"x": band([2.9])}}, base, "x")
    assert mixed["se"] == pytest.approx(math.hypot(0.01, 0.01 / math.sqrt(3)))


def test_fit_recovers_known_parameters():
    x = [2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
    a, b, c = 10.0, -4.0, 0.8
    y = [a + b * v + c * v * v for v in x]
    f = fit_quadratic(x, y)
    assert f["a"] == pytest.approx(a, abs=1e-8) and f["b"] == pytest.approx(b, abs=1e-8)
    assert f["c"] == pytest.approx(c, abs=1e-8) and f["x_best"] == pytest.approx(2.5) and f["inside"]
    noisy = fit_quadratic(x, [v + d for v, d in zip(y, [0.01, -0.01, 0.005, -0.005, 0.01, -0.01])])
    assert noisy["x_best"] == pytest.approx(2.5, abs=0.05) and noisy["rms"] < 0.01
    assert fit_quadratic(x[:3], y[:3]) is None  # too few points to leave residuals
    assert fit_quadratic(x, [2 * v for v in x])["x_best"] is None  # no curvature: no interior best
    assert spearman([1, 2, 3], [0.2, 0.5, 1.0]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [1.0, 0.5, 0.2]) == pytest.approx(-1.0)


def _claims(teachers):
    a = analyse(_rows(teachers=teachers), ["indomain", "ood"])
    return {c["claim"]: c for c in a["claims"]}, a


def test_claims_that_hold():
    # three teachers, weakest (loss 5.0, worse than the 3.0 baseline) to strongest (2.0); the
    # middle one gives the largest gain (a reversal), OOD gains exceed in-domain ones, and the
    # best alpha grows with strength
    claims, a = _claims({"weak": (5.0, 100, 500, {0.2: (0.10, 0.20), 0.8: (0.02, 0.05)}),
                         "mid": (3.5, 300, 1000, {0.2: (0.05, 0.15), 0.8: (0.20, 0.30)}),
                         "strong": (2.0, 900, 2000, {0.5: (0.08, 0.20), 0.8: (0.05, 0.10), 1.0: (0.09, 0.2)})})
    assert claims[1]["verdict"] == "holds" and "weak" in claims[1]["why"]
    assert claims[2]["verdict"] == "holds (reverses)"
    assert claims[3]["verdict"] == "holds"
    assert claims[4]["verdict"] == "holds" and "0.2, 0.8, 1" in claims[4]["why"]
    assert a["best_alpha"]["indomain"]["mid"]["alpha"] == 0.8
    text = "\n".join(markdown(a, ["indomain", "ood"]))
    assert "## The paper's claims" in text and "**holds (reverses)**" in text and "(n=3)" in text


def test_claims_that_do_not_hold():
    claims, _ = _claims({"weak": (5.0, 100, 500, {0.2: (-0.10, -0.10), 0.8: (-0.20, -0.25)}),
                         "mid": (2.8, 300, 1500, {0.2: (0.10, 0.02), 0.8: (0.05, 0.0)}),
                         "strong": (2.0, 900, 2000, {0.2: (0.30, 0.10), 0.8: (0.10, 0.0)})})
    assert claims[1]["verdict"] == "does not hold"
    assert claims[2]["verdict"] == "does not hold (still growing)"
    assert claims[3]["verdict"] == "does not hold"
    assert claims[4]["verdict"] == "within noise"  # the best alpha is 0.2 for every teacher
    claims, _ = _claims({"weak": (5.0, 100, 500, {0.2: (0.0, 0.0), 0.8: (0.30, 0.3)}),
                         "mid": (3.5, 300, 1000, {0.2: (0.20, 0.2), 0.8: (0.1, 0.1)}),
                         "strong": (2.0, 900, 2000, {0.2: (0.40, 0.4), 0.8: (0.1, 0.1)})})
    assert claims[4]["verdict"] == "does not hold"  # 0.8 for the weakest, 0.2 for the others
    assert claims[3]["verdict"] == "within noise"


def test_claims_within_noise_and_not_tested():
    claims, _ = _claims({"weak": (5.0, 100, 500, {0.5: (0.005, 0.006)}),
                         "strong": (2.0, 900, 2000, {0.5: (0.004, 0.005)})})
    assert claims[1]["verdict"] == "within noise"
    assert claims[2]["verdict"] == "not tested" and "three strengths" in claims[2]["why"]
    claims, _ = _claims({"strong": (2.0, 900, 2000, {0.5: (0.1, 0.1)})})
    assert claims[1]["verdict"] == "not tested" and claims[4]["verdict"] == "not tested"
    a = analyse(_rows(teachers={"t": (2.0, 9, 9, {0.5: (0.1, 0.1)})}), ["indomain"])
    assert {c["claim"]: c["verdict"] for c in a["claims"]}[3] == "not tested"


def test_scheduled_alpha_points_are_compared_with_the_best_fixed_alpha_and_kept_out_of_the_claims():
    from megatron_kd.study.analysis import schedule_rows

    rows = _rows(teachers={"weak": (5.0, 100, 500, {0.2: (0.05, 0.05), 0.8: (-0.10, -0.10)}),
                           "mid": (3.5, 300, 1000, {0.2: (0.05, 0.10), 0.8: (0.08, 0.12)}),
                           "strong": (2.0, 900, 2000, {0.2: (0.02, 0.02), 0.8: (0.06, 0.06)})})
    for t, (g_id, g_ood) in {"weak": (0.15, 0.05), "strong": (0.061, 0.061)}.items():  # 1 -> 0 cosine
        for i, e in enumerate(SEED_NOISE):
            rows.append({"name": f"{t}-sched-{i}", "student": "s", "teacher": t, "alpha": None,
                         "alpha_schedule": "1→0 cosine", "seed": i,
                         "val": {"indomain": 3.0 - g_id + e, "ood": 4.0 - g_ood + e},
                         "teacher_val": {"indomain": {"weak": 5.0, "strong": 2.0}[t]}})
    a = analyse(rows, ["indomain", "ood"])
    sched = {r["teacher"]: r["sets"] for r in schedule_rows(a)}
    assert sched["weak"]["indomain"]["best_fixed_alpha"] == 0.2
    assert sched["weak"]["indomain"]["diff"] == pytest.approx(0.10)
    assert sched["weak"]["indomain"]["verdict"] == "better"
    assert sched["weak"]["ood"]["verdict"] == "within noise"
    assert sched["strong"]["indomain"]["verdict"] == "within noise"
    # the claims read fixed α only: the weak teacher's best α stays 0.2 although its schedule gains more
    assert a["best_alpha"]["indomain"]["weak"]["alpha"] == 0.2
    claim4 = {c["claim"]: c for c in a["claims"]}[4]
    assert "0.2, 0.8, 0.8" in claim4["why"]
    text = "\n".join(markdown(a, ["indomain", "ood"]))
    assert "## α schedules vs the best fixed α" in text and "| 1→0 cosine |" in text
