"""Sweeps, reports and the logit analysis, end to end on CPU."""

import csv
import json

import pytest
import yaml

from tests.conftest import corpus_overrides
from tests.helpers import mkd, mkd_in_process


def test_paper_sweep_expands_to_the_papers_grid():
    from megatron_kd.study.sweep import expand, load_sweep

    points = expand(load_sweep("sweeps/paper"))
    assert len(points) == 4 * 7 * 6 + 1
    kd = [p for p in points if p.teacher]
    assert {p.meta["alpha"] for p in kd} == {0.2, 0.4, 0.5, 0.6, 0.8, 1.0}
    assert {p.meta["teacher_tokens"] for p in kd} == {int(x * 1e9) for x in (5, 10, 30, 50, 80, 100, 300)}
    names = [p.name for p in points]
    assert "llama3-1b__t-8b@300B__a0.6__T1__forward_kl" in names and "llama3-1b__baseline" in names


def test_empty_grid_is_an_error(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("base: train/tiny-mock\nbaseline: false\ngrid: {alpha: [0.5]}\n")
    rc, _, err = mkd_in_process(capsys, "sweep", str(tmp_path / "s.yaml"))
    assert rc == 2 and "expands to no runs" in err


@pytest.mark.slow
def test_two_point_sweep_runs_resumes_and_reports(text_corpus, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    common = corpus_overrides(text_corpus) + ["train.global_batch_size=8", "train.micro_batch_size=4",
                                              "train.seq_length=32", "logging.eval_samples=16"]
    mkd("train", "train/tiny-mock", *common, f"run.dir={teacher}", "train.steps=12",
        "model.num_layers=3", "train.lr=3e-3")
    sweep = {"name": "two", "base": "train/tiny-mock", "out": str(tmp_path / "sweep"),
             "overrides": common + ["train.steps=4"], "baseline": True, "baseline_steps": [3],
             "grid": {"teacher": [{"name": "t12", "checkpoint": str(teacher), "tokens": 12 * 256}],
                      "alpha": [0.2, 1.0]}}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(sweep))
    r = mkd("sweep", str(tmp_path / "two.yaml"), "--local", timeout=600)
    assert r.stdout.count(": training") == 4
    out = tmp_path / "sweep"
    assert (out / "report.md").is_file() and (out / "gain_vs_teacher.png").is_file()
    assert (out / "loss_curves.png").is_file()
    rows = list(csv.DictReader(open(out / "report.csv")))  # the results table (study/table.py)
    assert len(rows) == 4
    base = next(r for r in rows if r["teacher"] == "" and "steps" not in r["run"])
    assert int(base["student_tokens"]) == 4 * 256 and float(base["flops"]) > 0
    short = next(r for r in rows if r["run"].endswith("baseline-3steps"))  # baseline_steps: a frontier node
    assert int(short["student_tokens"]) == 3 * 256 and float(short["flops"]) == float(base["flops"]) * 3 / 4
    assert "Is distillation worth its compute here?" in r_text(out) and "baseline, 768 tokens" in r_text(out)
    assert (out / "loss_vs_compute.png").is_file()
    assert {float(r["alpha"]) for r in rows if r["teacher"] == "t12"} == {0.2, 1.0}
    assert all(r["teacher_val/indomain"] for r in rows if r["teacher"])  # teacher evaluated
    assert all(int(r["teacher_tokens"]) == 12 * 256 for r in rows if r["teacher"])
    assert "Best α per teacher" in r_text(out) and "t12" in r_text(out)
    # Re-running resumes: every finished point is skipped; a removed one is trained again.
    victim = next(p for p in (out / "runs").iterdir() if "a0.2" in p.name)
    import shutil

    shutil.rmtree(victim)
    r = mkd("sweep", str(tmp_path / "two.yaml"), "--local", timeout=600)
    assert r.stdout.count("finished, skipped") == 3 and r.stdout.count(": training") == 1
    assert f"{victim.name}: training" in r.stdout

    # analyze: a model against itself is KL 0 and agreement 1; against its teacher it is not.
    run = out / "runs" / victim.name
    r = mkd("analyze", str(run), str(run))
    res = json.loads(next((run / "analyze").glob("*.json")).read_text())["indomain"]
    assert res["top1_agreement"] == 1.0 and abs(res["kl_teacher_student"]) < 1e-6 and abs(res["js"]) < 1e-6
    mkd("analyze", str(teacher), str(run))
    res = json.loads((run / "analyze" / "teacher__step_0000004.json").read_text())["indomain"]
    assert res["kl_teacher_student"] > 0.01 and res["top1_agreement"] < 1.0
    # mkd fit reads the real sweep (its runs' FLOP-parameter sizes (models/flops.py) and tokens), and says in one
    # line that two baselines of one size cannot fit the supervised law's five free parameters
    rc, out_text, err = mkd_in_process(capsys, "fit", out, "--out", tmp_path / "law.json")
    assert rc == 2 and "5 free parameters but only 2 supervised runs" in err, err
    assert not (tmp_path / "law.json").exists()




def r_text(out):
    return (out / "report.md").read_text()


def test_cpu_study_sweep_is_the_grid_the_issue_asks_for():
    """recipes/sweeps/cpu-study.yaml (make study): three teacher sizes around the student's x three
    budgets, α {0.2, 0.5, 1} plus a schedule, three seeds, three baselines; every point resolves."""
    from megatron_kd.study.sweep import expand, load_sweep, resolve_point

    spec = load_sweep("sweeps/cpu-study")
    points = expand(spec)
    kd = [p for p in points if p.teacher]
    assert len(points) == 111 and len(kd) == 108
    assert len({p.meta["teacher"] for p in kd}) == 9
    assert {p.meta["teacher_model"] for p in kd} == {"models/cpu-micro", "models/cpu-tiny", "models/cpu-small"}
    assert {p.meta["alpha"] for p in kd} == {0.2, 0.5, 1.0, None}
    assert {p.meta.get("alpha_schedule") for p in kd} == {None, "1→0 cosine"}
    assert sorted({p.meta["seed"] for p in points if not p.teacher}) == [1, 2, 3]
    assert len({p.meta["teacher_cache"] for p in kd}) == 9  # one teacher pass per teacher checkpoint
    sched = resolve_point(spec, next(p for p in kd if p.meta.get("alpha_schedule")))
    assert sched.kd.alpha == 1.0 and sched.kd.alpha_schedule.kind == "cosine"
    assert sched.kd.alpha_schedule.final == 0.0 and sched.model.name == "cpu-tiny"
    assert sched.kd.top_k == 64 and sched.kd.other_bucket and sched.data.seed == 7
    base = resolve_point(spec, next(p for p in points if not p.teacher))
    assert base.teacher.cache is None and base.kd.alpha == 0


def test_cache_study_sweep_compares_five_teacher_signals():
    """recipes/sweeps/cpu-cache.yaml: one teacher checkpoint through five signals (online, three
    top-K caches, a sampled one), each point with the KD options its cache serves; the cache jobs
    get the encodings' options; bad cache mappings are one line."""
    from megatron_kd.errors import ConfigError
    from megatron_kd.study.sweep import cache_args, check_types, expand, load_sweep, resolve_point

    spec = load_sweep("sweeps/cpu-cache")
    points = expand(spec)
    assert len(points) == 5 * 3 + 3
    args = {p.meta["teacher"]: p.meta.get("cache_args") for p in points if p.teacher}
    assert args == {"full": None, "top64-fp32": "--top-k 64", "top64-bf16": "--top-k 64 --dtype bf16",
                    "top8-bf16": "--top-k 8 --dtype bf16", "sampled12": "--sample 12 --dtype fp16"}
    cfgs = {p.meta["teacher"]: resolve_point(spec, p) for p in points if p.teacher and p.meta["seed"] == 1}
    assert cfgs["top8-bf16"].kd.top_k == 8 and cfgs["top8-bf16"].kd.other_bucket
    assert cfgs["sampled12"].kd.top_k is None and not cfgs["sampled12"].kd.other_bucket
    assert cfgs["full"].teacher.cache is None and cfgs["sampled12"].teacher.cache.endswith("caches/sampled12")
    assert cache_args({"top_k": "all", "zstd": 3}) == ["--top-k", "all", "--zstd", "3"]
    for bad in ({"top_k": 8, "sample": 12}, {"sample": 300}, {"dtype": "fp8"}, {"zstd": 40}, {"k": 8}):
        t = {"checkpoint": "c", "cache": bad}
        with pytest.raises(ConfigError, match=r"grid.teacher\[\].cache"):
            check_types({"grid": {"teacher": [t]}}, "s.yaml")
    with pytest.raises(ConfigError, match=r"grid.teacher\[\]"):
        check_types({"grid": {"teacher": [{"checkpoint": "c", "cahce": {}}]}}, "s.yaml")


def test_study_v3_sweeps_are_the_pre_registered_design():
    """recipes/sweeps/cpu-study-v3-{short,long}.yaml as docs/STUDY.md fixes them: 6 and 4 teachers
    (the unigram control among them) x alpha 0.2/0.5/0.8 x seeds 1, 2; the short one's frontier
    at 150 and 1,200 steps; every point validated on indomain, ood_dev and ood_test every 50 steps."""
    from megatron_kd.study.sweep import expand, load_sweep, resolve_point

    for name, teachers, runs in (("short", 6, 36 + 6), ("long", 4, 24 + 2)):
        spec = load_sweep(f"sweeps/cpu-study-v3-{name}")
        points = expand(spec)
        kd = [p for p in points if p.teacher]
        assert len(points) == runs and len({p.meta["teacher"] for p in kd}) == teachers
        assert {p.meta["alpha"] for p in kd} == {0.2, 0.5, 0.8} and {p.meta["seed"] for p in points} == {1, 2}
        cfg = resolve_point(spec, next(p for p in kd if p.meta["teacher"] == "unigram"))
        assert cfg.teacher.unigram and cfg.kd.top_k == 64 and cfg.kd.other_bucket
        assert set(cfg.data.valid) == {"indomain", "ood_dev", "ood_test"} and cfg.logging.eval_interval == 50
        assert cfg.train.steps == (300 if name == "short" else 600)
    short = [p for p in expand(load_sweep("sweeps/cpu-study-v3-short")) if p.meta.get("baseline_steps")]
    assert sorted({p.meta["baseline_steps"] for p in short}) == [150, 1200]
