"""One compute currency: what `mkd advise` charges for a run is what `mkd report` counted for it.
For every run of docs/law/results.csv (the `make law` sweep's report) advise's pricing, given the
run's student and teacher in FLOP parameters and its tokens, is the row's
`student_flops + teacher_pass_flops`; and a budget of exactly that buys the run's tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_kd.config import load_config
from megatron_kd.models.flops import flop_params, row_flop_params
from megatron_kd.study.advise import Law, advise, charge
from megatron_kd.study.rows import RunRow
from megatron_kd.study.table import read_table
from tests.study.law_data import write_fitted_law

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "law" / "results.csv"


@pytest.fixture(scope="module")
def rows():
    return read_table(RESULTS)[0]


def _sizes(row: RunRow) -> tuple[float, float | None]:
    columns = row.flop_columns()
    (n_s, s_fallback), (n_t, t_fallback) = row_flop_params(columns, "student"), row_flop_params(columns, "teacher")
    assert not s_fallback and not (row.teacher_pass_flops and t_fallback), row.name
    return n_s, (n_t if row.teacher_pass_flops else None)


def test_advise_charges_every_run_what_the_report_counted(rows):
    distilled = 0
    for r in rows:
        n_s, n_t = _sizes(r)
        flops = charge(n_s, r.student_tokens, n_t)
        counted = r.student_flops + (r.teacher_pass_flops or 0.0)
        assert sum(flops.values()) == pytest.approx(counted, rel=1e-12), r.name
        distilled += n_t is not None
    assert distilled == 45  # every KD run with a teacher model (the unigram controls have none)


def test_the_runs_sizes_are_their_models_flop_parameters(rows):
    """The law's N for a run is flops.flop_params of its model at the sweep's 128 tokens."""
    by_name = {r.name: r for r in rows}
    for size in ("micro", "tiny", "small"):
        model = load_config(f"models/cpu-{size}", purpose="model").model
        row = by_name[f"cpu-{size}-400steps__baseline"]
        assert _sizes(row)[0] == pytest.approx(flop_params(model, 128), rel=1e-12)


def test_a_budget_of_a_runs_flops_buys_its_tokens(rows, tmp_path):
    """advise() itself, at the run's budget with its student and existing teacher: the option
    trains the run's tokens and is charged the row's student_flops and teacher_pass_flops."""
    law = Law.load(write_fitted_law(tmp_path / "law.json"))
    r = next(x for x in rows if x.name == "cpu-tiny-400steps__t-small@400__a0.5")
    n_s, n_t = _sizes(r)
    budget = r.student_flops + r.teacher_pass_flops
    options, _ = advise(law, budget, [n_s], (n_t, r.teacher_val["indomain"]), extrapolate=True)
    kd = next(o for o in options if o.kind == "existing teacher")
    assert kd.D_S == pytest.approx(r.student_tokens, rel=1e-12)
    assert kd.flops["student"] == pytest.approx(r.student_flops, rel=1e-12)
    assert kd.flops["teacher forward"] == pytest.approx(r.teacher_pass_flops, rel=1e-12)
    sup = next(o for o in options if o.kind == "supervised")
    assert sup.flops["student"] == pytest.approx(budget, rel=1e-12)


def test_a_law_in_another_count_says_its_flops_are_not_the_reports(tmp_path):
    import json

    from megatron_kd.errors import ConfigError

    path = write_fitted_law(tmp_path / "law.json")
    law = json.loads(path.read_text())
    assert law["parameters"] == "flop" and Law.load(path).parameters == "flop"
    law["parameters"] = "non-embedding"
    path.write_text(json.dumps(law))
    _, notes = advise(Law.load(path), 6e13, [1e6])
    assert any("not the report's" in n for n in notes), notes
    for bad in ("x", 0, 12.5):
        law["seq_length"] = bad
        path.write_text(json.dumps(law))
        with pytest.raises(ConfigError, match="seq_length"):
            Law.load(path)
