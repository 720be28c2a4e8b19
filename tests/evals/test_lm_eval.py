"""The lm-eval harness adapter, offline, on a tiny local multiple-choice task."""

import json

import pytest

from tests.conftest import corpus_overrides
from tests.distributed import run_distributed
from tests.helpers import mkd


@pytest.fixture(scope="module")
def trained(text_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("lmeval")
    r = mkd("train", "train/tiny-mock", *corpus_overrides(text_corpus), f"run.dir={d}", "train.steps=10",
            "train.seq_length=64", "logging.eval_samples=8")
    assert r.returncode == 0, r.stderr[-3000:]
    return d / "checkpoints" / "step_0000010"


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("tp", [1, 2])
def test_adapter_loglikelihoods_equal_the_models_cross_entropy(trained, tmp_path, tp):
    res = run_distributed("tests.workers.lm_eval_check:compare", tp, tmp_path, checkpoint=str(trained), tp=tp)
    r = res[0]
    assert r["worst_ll_diff"] < 1e-4 and r["rolling_diff"] < 1e-4, r
    assert all(x < 0 for x in r["lls"])


@pytest.mark.slow
def test_mkd_eval_runs_a_local_lm_eval_task(trained):
    r = mkd("eval", str(trained), "--tasks", "mkd_tiny_mc", "--include-path", "tests/evals/tasks")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "task mkd_tiny_mc: acc" in r.stdout
    out = json.loads((trained.parent.parent / "eval" / "step_0000010.json").read_text())
    acc = out["tasks"]["results"]["mkd_tiny_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and out["tasks"]["n-samples"]["mkd_tiny_mc"]["effective"] == 6
