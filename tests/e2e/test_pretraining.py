"""`mkd train` / `mkd eval` on real text: learning, exact resume, token budgets, resharding."""

import json
import math
import re

import pytest

from tests.conftest import corpus_overrides
from tests.helpers import mkd, read_metrics

pytestmark = pytest.mark.slow  # 30-step trainings through the CLI
TOKENS_PER_STEP = 8 * 32  # global batch x sequence length below


def run_args(corpus, run_dir, *extra):
    return ["train", "train/tiny-mock", *corpus_overrides(corpus), f"run.dir={run_dir}",
            "train.steps=30", "train.global_batch_size=8", "train.micro_batch_size=4",
            "train.seq_length=32", "train.lr=3e-3", "train.warmup_steps=3",
            "logging.eval_interval=5", "logging.eval_samples=32", "logging.log_interval=1",
            f"checkpoint.save_at_tokens=[{5 * TOKENS_PER_STEP},{10 * TOKENS_PER_STEP}]", *extra]


def test_learns_resumes_exactly_and_saves_budgets(text_corpus, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    mkd(*run_args(text_corpus, full))
    m = read_metrics(full)
    assert [r["step"] for r in m] == list(range(1, 31))
    assert all({"step", "tokens", "loss", "lm_loss", "lr"} <= set(r) for r in m)
    val = [r["val/indomain"] for r in m if "val/indomain" in r]
    assert len(val) == 6  # steps 5, 10, ..., 30
    # Real learning on held-out text: well below uniform guessing (ln 512 = 6.24) and falling.
    assert val[-1] < math.log(512) - 1.0, val  # measured: 4.71 after 30 steps
    assert val[-1] < val[0] - 0.5, val  # measured: 5.86 at step 5 -> 4.71
    assert list((full / "tensorboard").glob("events.out.tfevents.*"))

    # Token-budget checkpoints exist exactly at the requested budgets, plus the final one.
    ckpts = full / "checkpoints"
    for budget, step in ((1280, 5), (2560, 10)):
        state = json.loads((ckpts / f"tokens_{budget}" / "mkd_state.json").read_text())
        assert (state["tokens"], state["step"], state["kind"]) == (budget, step, "budget")
        assert (ckpts / f"tokens_{budget}" / "tokenizer.model").is_file()
        assert (ckpts / f"tokens_{budget}" / "config.yaml").is_file()
    assert (ckpts / "latest").read_text() == "step_0000030"

    # Stop at step 15, start again: steps 16..30 are the uninterrupted run's, bit for bit.
    r = mkd(*run_args(text_corpus, split, "train.stop_at_step=15"))
    assert "done: 15 steps" in r.stdout
    r = mkd(*run_args(text_corpus, split))
    assert "resumed from" in r.stdout and "at step 15" in r.stdout
    resumed = {x["step"]: x for x in read_metrics(split)}
    for x in m[15:]:
        assert abs(resumed[x["step"]]["loss"] - x["loss"]) <= 1e-6, (x, resumed[x["step"]])
        assert abs(resumed[x["step"]]["lr"] - x["lr"]) <= 1e-12
    assert abs(resumed[30]["val/indomain"] - m[-1]["val/indomain"]) <= 1e-6


@pytest.mark.multiproc
def test_tp2_checkpoint_evaluates_the_same_at_tp1(text_corpus, tmp_path):
    run = tmp_path / "tp2"
    mkd(*run_args(text_corpus, run, "train.steps=6", "checkpoint.save_at_tokens=[]",
                  "parallel.tp=2"), "--nproc", "2")
    final_val = read_metrics(run)[-1]["val/indomain"]
    r = mkd("eval", str(run), "parallel.tp=1")
    out = json.loads((run / "eval" / "step_0000006.json").read_text())
    assert out["tp"] == 1 and out["step"] == 6
    assert abs(out["loss"]["indomain"] - final_val) < 1e-5, (out, final_val)
    assert re.search(r"indomain\s+loss [0-9.]+\s+ppl", r.stdout)
