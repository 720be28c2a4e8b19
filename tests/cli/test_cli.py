"""`mkd` as a user types it: real subprocesses, real megatron-core, gloo on CPU."""

import re
import subprocess
import sys

import pytest
import yaml

from tests.distributed import REPO
from tests.helpers import ENV, mkd, mkd_in_process


def final_loss(stdout):
    m = re.search(r"done: (\d+) steps, final train (?:CE|objective[^)]*\)) ([0-9.]+)", stdout)
    assert m, stdout[-3000:]
    return int(m.group(1)), float(m.group(2))


@pytest.mark.parametrize("metrics, named", [
    ({"loss": 0.0524, "lm loss": 4.91, "kd loss": 0.0524, "alpha": 1.0},
     "final train objective (mix of CE and T^2*KD at alpha 1) 0.0524, train CE 4.9100"),
    ({"loss": 4.91, "lm loss": 4.91}, "final train CE 4.9100"),
])
def test_the_done_line_names_its_loss(metrics, named):
    """A KD run's loss is its training objective (at alpha 1 the KD term alone), a baseline's the CE."""
    from megatron_kd.cli.commands import describe_result
    from megatron_kd.training.trainer import TrainResult

    result = TrainResult("completed", 80, 80, 80, {**metrics, "val/indomain": 5.1})
    line = describe_result(result, "runs/x")
    assert line == f"done: 80 steps, {named}, indomain 5.1000, run dir runs/x"
    assert final_loss(line) == (80, metrics["loss"])  # the regex the tests below read it with


def test_help_lists_commands():
    r = mkd("--help")  # a real process: the entry point as a user starts it
    assert r.returncode == 0
    for word in ("train", "info", "config", "recipes"):
        assert word in r.stdout


def test_info_prints_parameter_count(capsys):
    rc, out, err = mkd_in_process(capsys, "info", "models/llama3-8b")
    assert rc == 0, err
    assert "8.03B (8,030,261,248)" in out
    assert "128256 (padded to 128256 at tp=1)" in out


def test_recipes_lists_runs_with_a_description_and_hides_private_bases(capsys):
    rc, out, err = mkd_in_process(capsys, "recipes")
    assert rc == 0, err
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert "kd/_cpu_base" not in rows and "train/tiny-mock" in rows
    assert rows["kd/cpu-tiny-to-small"].startswith("Weak -> strong: the cpu-tiny teacher")
    assert all(len(text) <= 90 and "\n" not in text for text in rows.values())


@pytest.mark.slow
@pytest.mark.multiproc
def test_train_single_process_then_tp2_under_nproc_then_torchrun(tmp_path):
    # One process.
    r = mkd("train", "train/tiny-mock", "train.steps=4", f"run.dir={tmp_path / 'single'}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "step 4/4 | tokens 512 | loss" in r.stdout and "tok/s | ETA" in r.stdout
    steps, loss_single = final_loss(r.stdout)
    assert steps == 4
    resolved = yaml.safe_load((tmp_path / "single" / "config.yaml").read_text())
    assert resolved["train"]["steps"] == 4 and resolved["data"]["mock"] is True
    assert "Traceback" not in r.stdout + r.stderr

    # --nproc 2 with TP=2: on CPU initial weights do not depend on the layout, so the loss
    # trajectory is the single process's.
    r = mkd("train", "train/tiny-mock", "train.steps=4", "parallel.tp=2", "--nproc", "2",
            f"run.dir={tmp_path / 'tp2'}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _, loss_tp2 = final_loss(r.stdout)
    assert abs(loss_tp2 - loss_single) < 1e-4

    # torchrun directly, PP=2 (DP derived = 1).
    from megatron_kd.runtime.distributed import free_port

    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(free_port()), "-m", "megatron_kd", "train", "train/tiny-mock",
                        "train.steps=3", "parallel.pp=2", f"run.dir={tmp_path / 'pp2'}"],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert final_loss(r.stdout)[0] == 3


def test_bad_input_is_one_line_and_non_zero(tmp_path, capsys):
    cases = [
        (["train", "train/tiny-mock", "parallel.tp=3"], 2, "num_attention_heads=4 is not divisible by parallel.tp=3"),
        (["train", "train/tiny-mock", "train.stpes=3"], 2, "did you mean 'train.steps'"),
        (["train", "train/tiny-mock", "precision.dtype=bf16", "precision.fp8=hybrid"], 3, "needs Transformer Engine"),
        (["train", "train/tiny-mock", "data.mock=false"], 2, "no training data configured"),
        (["train", "train/tiny-mock", "--nproc", "3", "parallel.tp=2"], 2, "world size 3 is not divisible"),
        (["config", "does/not/exist"], 2, "recipe 'does/not/exist' not found"),
    ]
    for args, code, text in cases:
        run_dir = [f"run.dir={tmp_path / 'x'}"] if args[0] == "train" else []
        rc, out, stderr = mkd_in_process(capsys, *args, *run_dir)  # refused before anything starts
        err = stderr.strip().splitlines()
        assert rc == code, (args, rc, out[-2000:], stderr[-2000:])
        assert err and err[-1].startswith("mkd: error: ") and text in err[-1], (args, err)
        assert "Traceback" not in stderr, args


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_eval_limit_below_one_is_one_line(capsys, tmp_path, limit):
    rc, out, err = mkd_in_process(capsys, "eval", str(tmp_path), "--tasks", "mkd_tiny_mc", "--limit", limit)
    assert rc == 2 and err.count("mkd: error:") == 1 and f"--limit {limit}" in err and "at least 1" in err
