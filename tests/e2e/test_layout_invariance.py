"""Same seed, same run, at any layout: a KD pair trained from scratch (no weights loaded) gives
the same losses at every step at TP=2 x PP=2 and at PP=2 x VPP=2 x DP=2 (interleaved 1F1B) as in
one process; its checkpoint, written with the distributed optimizer, resumes at PP=1; a seed
checkpoint written at TP=1 starts a PP=2 x VPP=2 student (reading a teacher cache written at
PP=2 x VPP=2) on the same run, whatever run.seed it is given. Plain pretraining at TP=2 x PP=2 is
tests/test_parallel_parity.py's; a seed checkpoint's TP resharding on load is the same load as a
resume at another TP (tests/checkpoint/test_moe_reshard.py, tests/e2e/test_pretraining.py)."""

import pytest
import torch

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


def _same_rows(ref: list[dict], rows: list[dict], what: str) -> None:
    for a, b in zip(ref, rows, strict=True):
        for key in COMPARED:
            assert key not in a or abs(a[key] - b[key]) < 1e-5, (what, key, a, b)


def test_the_seed_decides_the_initial_weights():
    """What keeps the seed-checkpoint equality below from being vacuous: the student that loads it
    is given run.seed=7, whose own initial weights are other numbers than the recipe's seed's."""
    from megatron_kd.config import load_config
    from megatron_kd.models.init import init_by_name

    model = load_config("train/tiny-mock", FOUR).model

    def embedding(seed: int) -> torch.Tensor:
        gpt = torch.nn.Module()
        gpt.embedding = torch.nn.Module()
        gpt.embedding.word_embeddings = torch.nn.Embedding(model.vocab_size, model.hidden_size)
        init_by_name(gpt, model, seed, tp=1, tp_rank=0)
        return gpt.embedding.word_embeddings.weight

    assert torch.equal(embedding(1234), embedding(1234))
    assert not torch.allclose(embedding(7), embedding(1234), atol=1e-3)


@pytest.fixture(scope="module")
def kd(mock_teacher):
    return [*STEPS, *FOUR, f"teacher.checkpoint={mock_teacher}", "kd.alpha=0.5", "kd.temperature=2.0",
            "logging.eval_samples=6"]


@pytest.fixture(scope="module")
def one_process(kd, tmp_path_factory) -> list[dict]:
    """The KD pair in one process (run.seed 1234, the recipe's): every layout below is compared
    with its metrics."""
    run = tmp_path_factory.mktemp("layout") / "one"
    mkd("train", "train/tiny-mock", *kd, f"run.dir={run}", timeout=600)
    rows = read_metrics(run)
    assert "val/mock" in rows[-1] and all(r["kd_loss"] > 0 for r in rows)
    return rows


def test_kd_from_scratch_is_layout_free(kd, one_process, tmp_path):
    # (PP=2 alone: tests/e2e/test_kd_training.py, and PP=2 x VPP=2 below)
    mkd("train", "train/tiny-mock", *kd, *TP2PP2, f"run.dir={tmp_path / 'tp2pp2'}", timeout=600)
    kd_rows = read_metrics(tmp_path / "tp2pp2")
    _same_rows(one_process, kd_rows, "kd tp2pp2")
    assert all(r["alpha"] == 0.5 and r["temperature"] == 2.0 and r["kd_loss"] > 0 for r in kd_rows)


def test_interleaved_pipeline_kd_equals_one_process(kd, one_process, tmp_path):
    """parallel.vpp: PP=2 x VPP=2 (rank 0 holds layers 0 and 2, rank 1 layers 1 and 3, of the
    student and of the teacher) x DP=2 with the distributed optimizer trains a KD pair from
    scratch as one process does; stopped at step 2, its checkpoint resumes at PP=1 (model and
    distributed optimizer resharded). A teacher cache written at PP=2 x VPP=2 (the teacher alone)
    trains a PP=2 x VPP=2 student that starts from a seed checkpoint written at TP=1 (given
    another run.seed, so only the loaded weights make it the same run), and validates on the same
    3 micro-batches (the schedule's groups of PP filled with masked ones)."""
    resumed = tmp_path / "resumed"
    dist_opt = [*kd, "parallel.distributed_optimizer=true", f"run.dir={resumed}"]
    mkd("train", "train/tiny-mock", *dist_opt, "train.stop_at_step=2", "parallel.pp=2", "parallel.vpp=2",
        "--nproc", 4, timeout=600)
    _same_rows(one_process[:2], read_metrics(resumed), "vpp x dp2 from scratch")
    r = mkd("train", "train/tiny-mock", *dist_opt, timeout=600)
    assert "resumed from" in r.stdout + r.stderr
    _close(_losses(resumed), [row["loss"] for row in one_process], "vpp checkpoint resumed at pp1")

    seed = tmp_path / "seed-ckpt"
    mkd("init", "train/tiny-mock", *FOUR, f"run.dir={tmp_path / 'unused'}", "--out", seed)
    cache = tmp_path / "cache"
    mkd("teacher-cache", "train/tiny-mock", *kd, "--out", cache, "--top-k", "all", *VPP, timeout=600)
    cached = tmp_path / "cached"
    mkd("train", "train/tiny-mock", *kd, f"teacher.cache={cache}", f"checkpoint.load={seed}", "run.seed=7",
        "data.seed=1234", *VPP, f"run.dir={cached}", timeout=600)
    _same_rows(one_process, read_metrics(cached), "vpp student from a seed checkpoint and a vpp cache")
