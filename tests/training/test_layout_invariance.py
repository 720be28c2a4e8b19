"""Same seed, same run, at any layout: a KD pair trained from scratch (no weights loaded) gives
the same losses at every step at TP=2 x PP=2 and at PP=2 x VPP=2 (interleaved 1F1B) as in one
process; a seed checkpoint written at TP=1 and loaded at TP=2 x PP=2 starts the same pretraining
run. Plain pretraining from scratch at TP=2 x PP=2 is the KD runs' student (its initialisation
and its language-model loss, compared below) without a teacher."""

import pytest

from tests.helpers import mkd, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

STEPS = ["train.steps=4", "train.lr=3e-3", "logging.tensorboard=false", "checkpoint.save_at_end=false"]
TP2PP2 = ["parallel.tp=2", "parallel.pp=2", "--nproc", 4]
VPP = ["parallel.pp=2", "parallel.vpp=2", "--nproc", 2]
# the student of every KD run here: 4 layers (PP=2 stages, PP=2 x VPP=2 chunks), 4 micro-batches
# a step, tied embeddings (their gradient summed between the first and the last stage)
FOUR = ["model.num_layers=4", "train.global_batch_size=8", "model.untie_embeddings_and_output_weights=false"]
COMPARED = ("loss", "lm_loss", "kd_loss", "grad_norm", "val/mock")


def _losses(run_dir) -> list[float]:
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    return [r["loss"] for r in rows]


def _close(a: list[float], b: list[float], what: str) -> None:
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, (what, a, b)


def _same_rows(ref: list[dict], run_dir, what: str) -> None:
    for a, b in zip(ref, read_metrics(run_dir), strict=True):
        for key in COMPARED:
            assert key not in a or abs(a[key] - b[key]) < 1e-5, (what, key, a, b)


def test_seed_checkpoint_at_tp1_starts_the_same_run_at_tp2pp2(tmp_path):
    mkd("train", "train/tiny-mock", *STEPS, f"run.dir={tmp_path / 'one'}", timeout=600)
    ref = _losses(tmp_path / "one")
    # another seed is another model (the equalities here are not vacuous)
    mkd("train", "train/tiny-mock", *STEPS, "run.seed=7", f"run.dir={tmp_path / 'seed7'}", timeout=600)
    assert abs(_losses(tmp_path / "seed7")[0] - ref[0]) > 1e-4
    seed = tmp_path / "seed-ckpt"
    mkd("init", "train/tiny-mock", "run.dir=" + str(tmp_path / "unused"), "--out", seed)
    mkd("train", "train/tiny-mock", *STEPS, *TP2PP2, f"checkpoint.load={seed}",
        f"run.dir={tmp_path / 'from-seed'}", timeout=600)
    _close(_losses(tmp_path / "from-seed"), ref, "seed checkpoint at tp2pp2")


@pytest.fixture(scope="module")
def kd(mock_teacher):
    return [*STEPS, *FOUR, f"teacher.checkpoint={mock_teacher}", "kd.alpha=0.5", "kd.temperature=2.0",
            "logging.eval_samples=6"]


@pytest.fixture(scope="module")
def one_process(kd, tmp_path_factory) -> list[dict]:
    """The KD pair in one process: every layout below is compared with its metrics."""
    run = tmp_path_factory.mktemp("layout") / "one"
    mkd("train", "train/tiny-mock", *kd, f"run.dir={run}", timeout=600)
    rows = read_metrics(run)
    assert "val/mock" in rows[-1] and all(r["kd_loss"] > 0 for r in rows)
    return rows


def test_kd_from_scratch_is_layout_free(kd, one_process, tmp_path):
    # (PP=2 alone: tests/distill/test_kd_training.py, and PP=2 x VPP=2 below)
    mkd("train", "train/tiny-mock", *kd, *TP2PP2, f"run.dir={tmp_path / 'tp2pp2'}", timeout=600)
    _same_rows(one_process, tmp_path / "tp2pp2", "kd tp2pp2")
    kd_rows = read_metrics(tmp_path / "tp2pp2")
    assert all(r["alpha"] == 0.5 and r["temperature"] == 2.0 and r["kd_loss"] > 0 for r in kd_rows)


def test_interleaved_pipeline_kd_equals_one_process(kd, one_process, tmp_path):
    """parallel.vpp: PP=2 x VPP=2 (rank 0 holds layers 0 and 2, rank 1 layers 1 and 3, of the
    student and of the teacher) trains a KD pair as one process does, and validates on the same
    3 micro-batches (the schedule's groups of PP filled with masked ones); a checkpoint written
    at PP=2 x VPP=2 x DP=2 with the distributed optimizer resumes at PP=1; a teacher cache
    written at PP=2 x VPP=2 trains a PP=2 x VPP=2 student the same."""
    mkd("train", "train/tiny-mock", *kd, *VPP, f"run.dir={tmp_path / 'vpp'}", timeout=600)
    _same_rows(one_process, tmp_path / "vpp", "vpp")
    ref = [r["loss"] for r in one_process]

    # stopped at step 2 at PP=2 x VPP=2 x DP=2, resumed at PP=1 (model and distributed optimizer resharded)
    dist_opt = [*kd, "parallel.distributed_optimizer=true", f"run.dir={tmp_path / 'resumed'}"]
    mkd("train", "train/tiny-mock", *dist_opt, "train.stop_at_step=2", "parallel.pp=2", "parallel.vpp=2",
        "--nproc", 4, timeout=600)
    mkd("train", "train/tiny-mock", *dist_opt, timeout=600)
    _close(_losses(tmp_path / "resumed"), ref, "vpp checkpoint resumed at pp1")

    # the cache job at PP=2 x VPP=2 (the teacher alone), a PP=2 x VPP=2 student from it
    cache = tmp_path / "cache"
    mkd("teacher-cache", "train/tiny-mock", *kd, "--out", cache, "--top-k", "all", *VPP, timeout=600)
    mkd("train", "train/tiny-mock", *kd, f"teacher.cache={cache}", *VPP, f"run.dir={tmp_path / 'cached'}",
        timeout=600)
    _close(_losses(tmp_path / "cached"), ref, "vpp student from a vpp cache")
