"""`mkd report` on hand-edited or damaged sweep files: a missing or wrong-typed field of
points.json, a metrics line or a teacher evaluation is one line naming the file and the field; a
NaN loss is left out of the plots with a warning naming the run; a run whose validation line was
lost is reported as such; a grid too big to expand is refused before expansion."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from megatron_kd.cli.main import main
from megatron_kd.config import dump_config, load_config
from megatron_kd.study import sweep_dir


def one_error(capsys, rc: int, text: str, code: int = 2) -> str:
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if "error:" in line]
    assert rc == code and len(lines) == 1 and text in lines[0], out + err
    assert "Traceback" not in out + err
    return out + err


def metrics(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def make_sweep(root: Path, kd_val: float = 3.5) -> Path:
    """A baseline and one KD point, finished (the teacher resolved by the fake below)."""
    (root / "teachers").mkdir(parents=True)
    cfg = load_config("train/tiny-mock")
    points = [{"name": "b", "student": "s", "teacher": None, "alpha": 0.0},
              {"name": "k", "student": "s", "teacher": "t1", "alpha": 0.5, "teacher_tokens": 1000}]
    for p, val in zip(points, (4.0, kd_val)):
        (root / "runs" / p["name"]).mkdir(parents=True)
        dump_config(cfg, root / "recipes" / f"{p['name']}.yaml")
        (root / "runs" / p["name"] / "metrics.jsonl").write_text(
            metrics({"step": 1, "tokens": 100, "loss": 5.0}, {"step": 2, "tokens": 200, "val/mock": val}))
    (root / "points.json").write_text(json.dumps(points))
    (root / "teachers" / "t1.json").write_text(json.dumps({"loss": {"mock": 3.0}}))
    return root


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_dir, "resolve_teacher", lambda cfg, check=False: (None, cfg.model, {"tokens": 1000}))
    return make_sweep(tmp_path / "s")


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


DAMAGE = {  # file -> new text, and what the one line says
    "points_field_wrong_type": ("points.json", json.dumps([{"name": "b", "student": "s", "alpha": "high"}]),
                                "points.json point 1 has 'high' as its 'alpha' (a number or null expected)"),
    "points_name_missing": ("points.json", json.dumps([{"student": "s"}]), "points.json point 1 has no 'name'"),
    "points_entry_not_mapping": ("points.json", json.dumps([["b"]]), "point 1 is a JSON list, not a mapping"),
    "points_teacher_a_number": ("points.json", json.dumps([{"name": "k", "student": "s", "teacher": 5}]),
                                "as its 'teacher'"),
    "points_student_missing": ("points.json", json.dumps([{"name": "b"}]), "points.json point 1 has no 'student'"),
    "metrics_without_tokens": ("runs/b/metrics.jsonl", metrics({"step": 2, "val/mock": 4.0}),
                               "metrics.jsonl (record 1) has no 'tokens'"),
    "metrics_tokens_a_string": ("runs/b/metrics.jsonl", metrics({"step": 2, "tokens": "200", "val/mock": 4.0}),
                                "has '200' as its 'tokens'"),
    "metrics_loss_a_string": ("runs/b/metrics.jsonl", metrics({"step": 2, "tokens": 200, "val/mock": "low"}),
                              "as its 'val/mock' (a number expected)"),
    "last_line_without_tokens": ("runs/b/metrics.jsonl", metrics({"step": 2, "tokens": 200, "val/mock": 4.0},
                                                                 {"step": 3, "loss": 1.0}),
                                 "(record 2) has no 'tokens'"),
    "teacher_eval_loss_a_list": ("teachers/t1.json", json.dumps({"loss": [3.0]}), "'loss' (a mapping or null"),
    "teacher_eval_loss_a_string": ("teachers/t1.json", json.dumps({"loss": {"mock": "x"}}),
                                   "t1.json 'loss' has 'x' as its 'mock'"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_file_is_one_line(case, sweep, capsys):
    name, text, expected = DAMAGE[case]
    (sweep / name).write_text(text)
    before = listing(sweep)
    one_error(capsys, main(["report", str(sweep)]), expected)
    assert listing(sweep) == before  # no report half-written


def test_nan_loss_is_left_out_of_the_plots(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setattr(sweep_dir, "resolve_teacher", lambda cfg, check=False: (None, cfg.model, {"tokens": 1000}))
    sweep = make_sweep(tmp_path / "s", kd_val=float("nan"))
    assert main(["report", str(sweep)]) == 0
    out = capsys.readouterr()
    assert "run k: the mock loss is not finite" in caplog.text
    assert "Traceback" not in out.out + out.err
    md = (sweep / "report.md").read_text()
    assert "Left out of the plots (a loss that is not finite): k." in md
    assert (sweep / "loss_curves.png").is_file()


def test_only_run_without_validation_is_named(tmp_path, capsys):
    sweep = tmp_path / "s"
    (sweep / "runs" / "b").mkdir(parents=True)
    dump_config(load_config("train/tiny-mock"), sweep / "recipes" / "b.yaml")
    (sweep / "points.json").write_text(json.dumps([{"name": "b", "student": "s", "teacher": None}]))
    # its last line, the final validation, cut short: "ignoring it", then no validation at all
    (sweep / "runs" / "b" / "metrics.jsonl").write_text(metrics({"step": 1, "tokens": 100, "loss": 5.0})
                                                        + '{"step": 2, "tokens": 200, "val/mo')
    before = listing(sweep)
    one_error(capsys, main(["report", str(sweep)]), "no run under")
    assert listing(sweep) == before


def test_run_without_validation_is_left_out_by_name(sweep, capsys, caplog):
    (sweep / "runs" / "k" / "metrics.jsonl").write_text(metrics({"step": 1, "tokens": 100, "loss": 5.0}))
    assert main(["report", str(sweep)]) == 0
    out = capsys.readouterr()
    assert "run k has no validation loss" in caplog.text and "Traceback" not in out.out + out.err


@pytest.mark.parametrize("grid,count", [
    ("alpha: [" + ", ".join(f"{i / 10**5:.5f}" for i in range(20_000)) + "]", "20,001"),
    ("teacher_grid: {models: {" + ", ".join(f"m{i}: models/cpu-tiny" for i in range(1000))
     + "}, tokens: [" + ", ".join(str(i + 1) for i in range(1000)) + "], checkpoint: 'x/{model}/{tokens}'}",
     "1,000,002"),
])
def test_grid_too_big_is_refused_before_expansion(grid, count, tmp_path, capsys):
    spec = tmp_path / "big.yaml"
    out = tmp_path / "out"
    spec.write_text(f"name: big\nbase: train/tiny-mock\nout: {out}\ngrid:\n  teacher: "
                    f"[{{name: t, checkpoint: x}}]\n  {grid}\n")
    t0 = time.perf_counter()
    one_error(capsys, main(["sweep", str(spec)]), f"would expand to {count} runs, above the limit of 10,000")
    assert time.perf_counter() - t0 < 30
    assert not out.exists()
