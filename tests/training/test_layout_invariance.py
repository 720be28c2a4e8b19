"""Same seed, same run, at any layout: training from scratch (no weights loaded) gives the same
losses at every step at TP=2 x PP=2 as in one process, for plain pretraining and for a KD pair,
and at PP=2 x VPP=2 (interleaved 1F1B) for a KD pair; a seed checkpoint written at TP=1 and
loaded at TP=2 x PP=2 starts the same run."""

import pytest

from tests.helpers import mkd, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

STEPS = ["train.steps=4", "train.lr=3e-3", "logging.tensorboard=false", "checkpoint.save_at_end=false"]
LAYOUTS = {"tp2pp2": (["parallel.tp=2", "parallel.pp=2"], 4)}


def _losses(run_dir) -> list[float]:
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    return [r["loss"] for r in rows]


def _close(a: list[float], b: list[float], what: str) -> None:
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, (what, a, b)


def test_pretraining_from_scratch_is_layout_free(tmp_path):
    mkd("train", "train/tiny-mock", *STEPS, f"run.dir={tmp_path / 'one'}", timeout=600)
    ref = _losses(tmp_path / "one")
    # (PP=2 alone is a sub-case of both: it is in tests/test_parallel_parity.py from shared weights)
    layout, nproc = LAYOUTS["tp2pp2"]
    mkd("train", "train/tiny-mock", *STEPS, *layout, f"run.dir={tmp_path / 'tp2pp2'}", "--nproc", nproc, timeout=600)
    _close(_losses(tmp_path / "tp2pp2"), ref, "tp2pp2")
    # another seed is another model (the check above is not vacuous)
    mkd("train", "train/tiny-mock", *STEPS, "run.seed=7", f"run.dir={tmp_path / 'seed7'}", timeout=600)
    assert abs(_losses(tmp_path / "seed7")[0] - ref[0]) > 1e-4

    # a seed checkpoint written once at TP=1 starts the same run at TP=2 x PP=2
    seed = tmp_path / "seed-ckpt"
    mkd("init", "train/tiny-mock", "run.dir=" + str(tmp_path / "unused"), "--out", seed)
    layout, nproc = LAYOUTS["tp2pp2"]
    mkd("train", "train/tiny-mock", *STEPS, *layout, f"checkpoint.load={seed}",
        f"run.dir={tmp_path / 'from-seed'}", "--nproc", nproc, timeout=600)
    _close(_losses(tmp_path / "from-seed"), ref, "seed checkpoint at tp2pp2")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 4-layer tiny teacher (3 steps): it splits into PP=2 stages and PP=2 x VPP=2 chunks."""
    d = tmp_path_factory.mktemp("teacher")
    mkd("train", "train/tiny-mock", "train.steps=3", "run.seed=99", "model.num_layers=4",
        "train.global_batch_size=8", f"run.dir={d}", timeout=600)
    return d


def test_kd_from_scratch_is_layout_free(teacher, tmp_path):
    # (PP=2 alone: tests/distill/test_kd_training.py, and PP=2 x VPP=2 below)
    kd = [*STEPS, f"teacher.checkpoint={teacher}", "kd.alpha=0.5", "kd.temperature=2.0"]
    mkd("train", "train/tiny-mock", *kd, f"run.dir={tmp_path / 'one'}", timeout=600)
    ref = _losses(tmp_path / "one")
    layout, nproc = LAYOUTS["tp2pp2"]
    mkd("train", "train/tiny-mock", *kd, *layout, f"run.dir={tmp_path / 'tp2pp2'}", "--nproc", nproc, timeout=600)
    _close(_losses(tmp_path / "tp2pp2"), ref, "kd tp2pp2")
    kd_rows = read_metrics(tmp_path / "tp2pp2")
    assert all(r["alpha"] == 0.5 and r["temperature"] == 2.0 and r["kd_loss"] > 0 for r in kd_rows)


def test_interleaved_pipeline_kd_equals_one_process(teacher, tmp_path):
    """parallel.vpp: PP=2 x VPP=2 (rank 0 holds layers 0 and 2, rank 1 layers 1 and 3, of the
    student and of the teacher) trains a KD pair as one process does, and validates on the same
    3 micro-batches (the schedule's groups of PP filled with masked ones); a checkpoint written
    at PP=2 x VPP=2 x DP=2 with the distributed optimizer resumes at PP=1; a teacher cache
    written at PP=2 x VPP=2 trains a PP=2 x VPP=2 student the same. Tied embeddings: their
    gradient is summed between the first and the last virtual stage."""
    four = ["model.num_layers=4", "train.global_batch_size=8"]  # 4 micro-batches a step
    kd = [*STEPS, *four, f"teacher.checkpoint={teacher}", "kd.alpha=0.5", "kd.temperature=2.0",
          "model.untie_embeddings_and_output_weights=false", "logging.eval_samples=6"]
    vpp = ["parallel.pp=2", "parallel.vpp=2", "--nproc", 2]
    mkd("train", "train/tiny-mock", *kd, f"run.dir={tmp_path / 'one'}", timeout=600)
    ref = read_metrics(tmp_path / "one")
    mkd("train", "train/tiny-mock", *kd, *vpp, f"run.dir={tmp_path / 'vpp'}", timeout=600)
    for a, b in zip(ref, read_metrics(tmp_path / "vpp"), strict=True):
        for key in ("loss", "lm_loss", "kd_loss", "grad_norm", "val/mock"):
            assert key not in a or abs(a[key] - b[key]) < 1e-5, (key, a, b)
    assert "val/mock" in ref[-1]
    assert all(r["kd_loss"] > 0 for r in ref)

    # stopped at step 2 at PP=2 x VPP=2 x DP=2, resumed at PP=1 (model and distributed optimizer resharded)
    dist_opt = [*kd, "parallel.distributed_optimizer=true", f"run.dir={tmp_path / 'resumed'}"]
    mkd("train", "train/tiny-mock", *dist_opt, "train.stop_at_step=2", "parallel.pp=2", "parallel.vpp=2",
        "--nproc", 4, timeout=600)
    mkd("train", "train/tiny-mock", *dist_opt, timeout=600)
    _close(_losses(tmp_path / "resumed"), [r["loss"] for r in ref], "vpp checkpoint resumed at pp1")

    # the cache job at PP=2 x VPP=2 (the teacher alone), a PP=2 x VPP=2 student from it
    cache = tmp_path / "cache"
    mkd("teacher-cache", "train/tiny-mock", *kd, "--out", cache, "--top-k", "all", *vpp, timeout=600)
    mkd("train", "train/tiny-mock", *kd, f"teacher.cache={cache}", *vpp, f"run.dir={tmp_path / 'cached'}",
        timeout=600)
    _close(_losses(tmp_path / "cached"), [r["loss"] for r in ref], "vpp student from a vpp cache")
