"""The throughput keys change the speed and memory of a run, not its numbers: activation
recomputation (selective, full) and overlapped / bucketed gradient reduction give the same losses
as without them; throughput and the profile are logged."""

import json

import pytest

from tests.helpers import mkd, read_metrics

pytestmark = pytest.mark.slow

RUN = ["train.steps=3", "train.lr=3e-3", "logging.tensorboard=false", "checkpoint.save_at_end=false"]


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir)]


def test_recompute_gives_the_same_losses(tmp_path):
    mkd("train", "train/tiny-mock", *RUN, f"run.dir={tmp_path / 'none'}")
    ref = _losses(tmp_path / "none")
    for name, keys in (("selective", ["train.recompute=selective"]),
                       ("full2", ["train.recompute=full", "train.recompute_layers=2"])):
        r = mkd("train", "train/tiny-mock", *RUN, *keys, f"run.dir={tmp_path / name}", "--profile-steps", "1")
        assert max(abs(a - b) for a, b in zip(_losses(tmp_path / name), ref)) < 1e-6, name
        assert "TFLOP/s" in r.stdout + r.stderr and "TFLOP/s/GPU" not in r.stdout + r.stderr
    rows = read_metrics(tmp_path / "full2")
    assert all(r["tflops_per_gpu"] > 0 and r["tokens_per_s_per_gpu"] > 0 and "mfu" not in r for r in rows)
    profile = json.loads((tmp_path / "full2" / "profile.json").read_text())
    assert profile["steps"] == 1 and profile["step_s"] > 0


@pytest.mark.multiproc
def test_overlapped_and_bucketed_gradient_reduction_gives_the_same_losses(tmp_path):
    dp = [*RUN, "train.global_batch_size=8", "train.micro_batch_size=2"]
    mkd("train", "train/tiny-mock", *dp, f"run.dir={tmp_path / 'plain'}", "--nproc", 2, timeout=600)
    ref = _losses(tmp_path / "plain")
    keys = ["parallel.overlap_grad_reduce=true", "parallel.ddp_bucket_size=5000", "parallel.grad_reduce_in_fp32=true",
            "parallel.distributed_optimizer=true"]
    mkd("train", "train/tiny-mock", *dp, *keys, f"run.dir={tmp_path / 'overlap'}", "--nproc", 2, timeout=600)
    assert max(abs(a - b) for a, b in zip(_losses(tmp_path / "overlap"), ref)) < 1e-5
