"""The one compute currency (models/flops.py): N counted by hand, and the report, the checked-in
results table and the functions `mkd fit`/`mkd advise` call agreeing on every run's FLOPs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_kd.config import dump_config, load_config
from megatron_kd.config.schema import ModelConfig
from megatron_kd.models import flops
from megatron_kd.study import sweep_dir
from megatron_kd.study.table import read_table

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "law" / "results.csv"


def _model(**kw) -> ModelConfig:
    return ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4,
                       num_query_groups=2, vocab_size=1000, **kw)


def test_flop_params_by_hand():
    # per layer 61,568 weights (q, k, v, out, SwiGLU, the two norms); two layers; the output layer
    # 1000 x 64; attention 2 layers x 4 heads x 16 dims x 128 positions = 16,384
    m = _model()
    assert flops.flop_params(m, 128) == 2 * 61_568 + 64_000 + 16_384
    assert flops.training_flops_per_token(m, 128) == 6 * 203_520
    # the output layer is computed whether or not it shares the embedding's weights; the input
    # embedding (a lookup) is never counted
    assert flops.flop_params(_model(untie_embeddings_and_output_weights=True), 128) == flops.flop_params(m, 128)
    assert flops.step_flops_per_token(m, 128, teacher=m) == 8 * 203_520


def test_cpu_tiny_and_llama3_8b():
    tiny = load_config("models/cpu-tiny", purpose="model").model
    assert flops.training_flops_per_token(tiny, 128) == 1_476_096  # as docs/law/results.csv counts it
    big = load_config("models/llama3-8b", purpose="model").model
    # 6.98B non-embedding + 0.53B output layer + 32 x 32 x 128 x 8192 attention
    assert flops.flop_params(big, 8192) == 6_979_588_096 - 4096 + 525_336_576 + 1_073_741_824


def test_advise_and_the_report_count_one_runs_flops_alike(tmp_path, monkeypatch):
    """A real run's config (kd/cpu-tiny-to-small) through `mkd report`'s rows: its student_flops +
    teacher_pass_flops are what advise's functions give for the same run, with N from the row
    (as the law reads it) and from the model configs."""
    cfg = load_config("kd/cpu-tiny-to-small")
    teacher = load_config("models/cpu-tiny", purpose="model").model
    monkeypatch.setattr(sweep_dir, "resolve_teacher", lambda c, check=False: (None, teacher, {"tokens": 614_400}))
    root = tmp_path / "sweep"
    (root / "teachers").mkdir(parents=True)
    (root / "runs" / "k").mkdir(parents=True)
    dump_config(cfg, root / "recipes" / "k.yaml")
    (root / "runs" / "k" / "metrics.jsonl").write_text(json.dumps({"step": 300, "tokens": 614_400, "val/x": 4.0}))
    (root / "points.json").write_text(json.dumps([{"name": "k", "student": "s", "teacher": "t", "alpha": 0.5}]))
    (root / "teachers" / "t.json").write_text(json.dumps({"loss": {"x": 3.0}}))
    row = sweep_dir.collect(root)[0][0]
    n_s, fallback_s = flops.row_flop_params(row.flop_columns(), "student")
    n_t, fallback_t = flops.row_flop_params(row.flop_columns(), "teacher")
    assert not fallback_s and not fallback_t
    assert n_s == pytest.approx(flops.flop_params(cfg.model, 128))
    assert n_t == pytest.approx(flops.flop_params(teacher, 128))
    D = row.student_tokens
    advise = flops.training_flops(n_s, D) + flops.forward_flops(n_t, D)
    assert advise == pytest.approx(row.student_flops + row.teacher_pass_flops, rel=1e-12)
    assert flops.tokens_for_budget(advise, n_s, n_t) == pytest.approx(D, rel=1e-12)
    assert row.teacher_pretrain_flops == pytest.approx(flops.training_flops(n_t, 614_400), rel=1e-12)


def test_every_checked_in_run_costs_the_same_in_both():
    """docs/law/results.csv: N read back from each row is its model's FLOP parameters, and the
    advise-facing functions give back the row's FLOPs."""
    rows, _ = read_table(RESULTS)
    models = {}
    for r in rows:
        name = "cpu-" + r.student.split("-")[1]  # e.g. cpu-micro-100steps -> cpu-micro
        m = models.setdefault(name, load_config(f"models/{name}", purpose="model").model)
        n_s, _ = flops.row_flop_params(r.flop_columns())
        assert n_s == pytest.approx(flops.flop_params(m, 128), rel=1e-12), r.name
        assert flops.training_flops(n_s, r.student_tokens) == pytest.approx(r.student_flops, rel=1e-12)
        if r.teacher_model:
            n_t, _ = flops.row_flop_params(r.flop_columns(), "teacher")
            t = load_config(r.teacher_model, purpose="model").model
            assert n_t == pytest.approx(flops.flop_params(t, 128), rel=1e-12), r.name


def test_a_row_with_only_parameter_counts_falls_back_to_total_parameters():
    row = {"student_params": 1e6, "student_tokens": 1000, "teacher_params": 4e6}
    assert flops.row_flop_params(row, "student") == (1e6, True)
    assert flops.row_flop_params(row, "teacher") == (4e6, True)
    assert flops.row_flop_params({"student_tokens": 1000}) == (None, False)


def test_info_counts_at_the_models_own_length_unless_the_recipe_sets_one(capsys):
    from megatron_kd.cli.main import main

    assert main(["info", "models/llama3-8b"]) == 0
    assert "51.47B at seq 8192 (the model's max_position_embeddings)" in capsys.readouterr().out
    assert main(["info", "models/llama3-8b", "train.seq_length=2048"]) == 0
    per_token = flops.training_flops_per_token(load_config("models/llama3-8b", purpose="model").model, 2048)
    assert f"{per_token / 1e9:.2f}B at seq 2048\n" in capsys.readouterr().out
