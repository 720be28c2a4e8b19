"""Is distillation worth its compute (study/compute.py): the three accountings, the supervised
frontier and each KD point's compute-matched gain, on synthetic rows with known answers."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from megatron_kd.study import analysis, compute
from megatron_kd.study.report import write_report
from megatron_kd.study.rows import RunRow, frozen_losses
from megatron_kd.study.sweep import expand, grid_size
from megatron_kd.study.table import read_table, write_table
from tests.study.runrow import run_row

SETS = ["indomain", "ood"]
F_TOK = 6.0 * 1e6  # the student's training FLOPs per token (6N, N = 1M)


def _kd(**kw) -> RunRow:
    return run_row(**{"name": "kd", "student": "s", "teacher": "t@1", "alpha": 0.5, "student_params": 1e6,
                      "student_tokens": 1000, "student_flops": 6e9, "teacher_params": 4e6, "teacher_tokens": 5000,
                      "teacher_pass_flops": 8e9, "teacher_pretrain_flops": 1.2e11, "teacher_pass_shared_by": 4, **kw})


def test_three_accountings_and_the_6nd_estimate():
    t = compute.totals(_kd())
    assert t == {"a": 6e9 + 2e9, "b": 6e9 + 8e9, "c": 6e9 + 8e9 + 1.2e11}
    bare = _kd(student_flops=None, teacher_pass_flops=None, teacher_pretrain_flops=None, teacher_pass_shared_by=None)
    f = compute.run_flops(bare)
    assert f["student"] == 6 * 1e6 * 1000 and f["alone"] == 2 * 4e6 * 1000 and f["pretrain"] == 6 * 4e6 * 5000
    assert f["shared"] == f["alone"] and len(f["estimated"]) == 3
    assert compute.totals(run_row(student_flops=5.0)) == {"a": 5.0, "b": 5.0, "c": 5.0}


def test_frontier_is_the_best_loss_at_or_below_a_compute_joined_in_log_log():
    front = compute.Frontier([(1e9, 5.0, 3, "a"), (4e9, 4.0, 3, "b"), (16e9, 4.5, 1, "c"), (64e9, 3.0, 1, "d")])
    assert front.value == [5.0, 4.0, 4.0, 3.0]  # c got worse: the frontier stays at b's loss
    mid = front.at(2e9, sd=0.1)  # half-way in log compute between a and b
    assert mid["kind"] == "interpolated" and mid["value"] == pytest.approx(math.sqrt(5.0 * 4.0))
    # delta method: F^2 ((1/2)^2 (s^2/3)/5^2 + (1/2)^2 (s^2/3)/4^2)
    assert mid["var"] == pytest.approx(20.0 * (0.25 * 0.01 / 3 / 25 + 0.25 * 0.01 / 3 / 16))
    flat = front.at(8e9, sd=0.1)  # between b and c: both are b
    assert flat["value"] == pytest.approx(4.0) and flat["var"] == pytest.approx(0.01 / 3)
    assert front.at(4e9, sd=None) == {"value": 4.0, "var": None, "kind": "interpolated"}
    assert front.at(1e11, 0.1)["kind"] == "at most" and front.at(1e11, 0.1)["value"] == 3.0
    assert front.at(1e8, 0.1)["kind"] == "at least" and front.at(1e8, 0.1)["value"] == 5.0


def test_matched_gain_verdicts_and_bounds():
    front = compute.Frontier([(1e9, 5.0, 3, "a"), (4e9, 4.0, 3, "b")])
    good = compute.matched_gain(front, 2e9, 4.0, 3, 0.01, 20, 0.95)
    assert good["gain"] == pytest.approx(math.sqrt(20.0) - 4.0) and good["verdict"] == "worth it"
    assert good["interval"][0] < good["gain"] < good["interval"][1]
    assert compute.matched_gain(front, 2e9, 4.8, 3, 0.01, 20, 0.95)["verdict"] == "not worth it"
    assert compute.matched_gain(front, 2e9, 4.472, 3, 0.05, 20, 0.95)["verdict"] == "within noise"
    # above the frontier's range a gain is only an upper bound: it can say "not worth it", never "worth it"
    above_bad = compute.matched_gain(front, 1e10, 4.5, 3, 0.01, 20, 0.95)
    assert above_bad["kind"] == "at most" and above_bad["verdict"] == "not worth it"
    assert compute.matched_gain(front, 1e10, 3.5, 3, 0.01, 20, 0.95)["verdict"] == "beyond the frontier"
    below = compute.matched_gain(front, 1e8, 4.0, 3, 0.01, 20, 0.95)
    assert below["kind"] == "at least" and below["verdict"] == "worth it"
    assert compute.matched_gain(front, 2e9, 4.0, 3, None, 0, 0.95)["verdict"] == "no noise estimate"
    assert compute.matched_gain(compute.Frontier([]), 2e9, 4.0, 3, 0.01, 5, 0.95)["verdict"] == "no frontier"


def _frontier_sweep(rng, noise=0.005):
    """A student on the supervised law L(C) = 10 * C^-0.05 (C in FLOPs): baselines at three
    lengths x 3 seeds, one teacher-zoo run of the same model, and two KD teachers: "good" beats
    the law at its total compute by 0.1 nats, "bad" is 0.1 worse."""
    law = lambda c: 10.0 * c ** -0.05  # noqa: E731
    rows = []
    for tokens in (1000, 4000, 16000):
        for seed in (1, 2, 3):
            c = F_TOK * tokens
            rows.append(run_row(f"base{tokens}-{seed}", "s", teacher=None, alpha=0.0, seed=seed,
                                data_seed=0, student_params=1e6, student_tokens=tokens, student_flops=c,
                                val={s: law(c) + rng.normal(0, noise) for s in SETS}))
    zoo_c = F_TOK * 64000  # the student's own model trained 16x longer: the frontier's top
    for name, target, t_params, t_model in (("good@1", -0.1, 0.5e6, "m"), ("bad@1", 0.1, 0.5e6, "m"),
                                            ("s@64K", 0.0, 1e6, "models/s")):
        for seed in (1, 2, 3):
            zoo = t_model == "models/s"
            r = run_row(f"{name}-{seed}", "s", teacher=name, alpha=0.5, seed=seed,
                        data_seed=0, student_params=1e6, student_tokens=4000, student_flops=F_TOK * 4000,
                        teacher_params=t_params, teacher_tokens=64000 if zoo else 10000, teacher_model=t_model,
                        teacher_pass_flops=2 * t_params * 4000,
                        teacher_pretrain_flops=zoo_c if zoo else 6 * t_params * 10000,
                        teacher_val={s: law(zoo_c) for s in SETS})
            total_b = compute.totals(r)["b"]
            rows.append(replace(r, val=frozen_losses({s: law(total_b) + target + rng.normal(0, noise) for s in SETS})))
    return rows, law


def test_compute_matched_gains_on_a_known_frontier(tmp_path):
    rows, law = _frontier_sweep(np.random.default_rng(0))
    rows = compute.with_baseline_lengths(rows)  # the 4000-token baselines pair with the KD runs
    assert {r.baseline_tokens for r in rows if not r.teacher} == {None, 1000, 16000}
    study = analysis.analyse(rows, SETS, n_boot=0)
    st = study["students"]["s"]
    assert st["baseline"][-1] is None  # the paired baseline is the KD runs' length
    cs = compute.compute_study(rows, study, SETS, 0.95)["s"]
    labels = [n["label"] for n in cs["sets"]["indomain"]["nodes"]]
    assert len(labels) == 4 and "teacher s@64K (same model)" in labels  # 3 lengths + the zoo run
    assert cs["sets"]["indomain"]["df"] == 6 * 2  # 3 baseline lengths and 3 KD points, 3 seeds each
    ans = {a["teacher"]: a for a in cs["answers"]["indomain"]["b"]}
    assert ans["good@1"]["verdict"] == "worth it" and ans["bad@1"]["verdict"] == "not worth it"
    # the frontier is a log-log chord of a power law: close to the law itself at this compute
    assert ans["good@1"]["gain"] == pytest.approx(0.1, abs=0.02)
    assert ans["bad@1"]["gain"] == pytest.approx(-0.1, abs=0.02)
    # (c) adds the teacher's pretraining: more compute, so a lower frontier and a smaller gain
    c = {a["teacher"]: a for a in cs["answers"]["indomain"]["c"]}
    assert c["good@1"]["compute"] > ans["good@1"]["compute"] and c["good@1"]["gain"] < ans["good@1"]["gain"]
    # the same-model teacher trained for the student costs more than the frontier spans
    assert c["s@64K"]["kind"] == "at most"
    # the report says it, and report.json carries it
    out = write_report(rows, SETS, tmp_path / "rep", "t", 0.95, 0.01, None)
    md = out["markdown"]
    assert "## Is distillation worth its compute here? (s)" in md and "worth it: 1 (good@1)" in md
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert {a["teacher"] for a in doc["compute"]["s"]["answers"]["ood"]["c"]} == {"good@1", "bad@1", "s@64K"}
    assert (tmp_path / "rep" / "loss_vs_compute.png").is_file()
    # through the table: the same compute section
    write_table(tmp_path / "t.csv", rows, SETS)
    back, _ = read_table(tmp_path / "t.csv")
    again = write_report(back, SETS, tmp_path / "rep2", "t", 0.95, 0.01, None)["json"]["compute"]
    assert json.loads(json.dumps(again, default=list)) == json.loads(json.dumps(doc["compute"]))


def test_baseline_steps_sweep_key(tmp_path):
    spec = {"name": "x", "base": "kd/_cpu_base", "out": str(tmp_path), "_path": "x.yaml", "seeds": [1, 2],
            "baseline_steps": [50, 100], "grid": {"student": ["models/cpu-tiny"]}}
    points = expand(spec)
    assert grid_size(spec) == len(points) == 6
    extra = [p for p in points if p.meta.get("baseline_steps")]
    assert sorted(p.name for p in extra)[:2] == ["cpu-tiny__baseline-100steps__seed1",
                                                 "cpu-tiny__baseline-100steps__seed2"]
    assert all(f"train.steps={p.meta['baseline_steps']}" in p.overrides for p in extra)
