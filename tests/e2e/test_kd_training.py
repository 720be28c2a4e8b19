"""Distillation runs end to end: exactness at α=0, PP/TP parity (the fused output layer at TP=2),
learning from the teacher, kd.auto, and clear errors for missing or mismatched teachers."""

import pytest

from tests.conftest import corpus_overrides
from tests.distributed import run_distributed
from tests.helpers import mkd, mkd_in_process, read_metrics

pytestmark = pytest.mark.slow  # every test uses the 40-step teacher (tests/conftest.py text_teacher)


def run(corpus, run_dir, *extra):
    return ["train", "train/tiny-mock", *corpus_overrides(corpus), f"run.dir={run_dir}",
            "train.global_batch_size=8", "train.micro_batch_size=4", "train.seq_length=32",
            "train.lr=3e-3", "train.warmup_steps=2", "logging.eval_samples=16", *extra]


@pytest.fixture(scope="module")
def alpha_runs(text_corpus, text_teacher, tmp_path_factory) -> dict:
    """20 steps of the same student: plain pretraining, KD at α = 0 and KD at α = 0.8."""
    root = tmp_path_factory.mktemp("alpha")
    mkd(*run(text_corpus, root / "plain", "train.steps=20"))
    for alpha in (0.0, 0.8):
        mkd(*run(text_corpus, root / f"a{alpha}", "train.steps=20", f"teacher.checkpoint={text_teacher}",
                 f"kd.alpha={alpha}"))
    return {name: read_metrics(root / name) for name in ("plain", "a0.0", "a0.8")}


def test_alpha0_is_plain_pretraining(alpha_runs):
    plain, kd0 = alpha_runs["plain"], alpha_runs["a0.0"]
    assert len(plain) == 20 and [m["loss"] for m in plain] == [m["loss"] for m in kd0]  # bit for bit
    assert plain[-1]["val/indomain"] == kd0[-1]["val/indomain"]
    assert all(m["alpha"] == 0 and m["kd_loss"] > 0 for m in kd0)
    assert {"teacher_lm_loss", "teacher_entropy", "top1_agreement", "temperature"} <= set(kd0[0])
    assert not any(k.startswith("kd/") for k in kd0[0])  # kd.auto's reports: its runs only
    # The teacher is better than an untrained student on the same batch.
    assert kd0[0]["teacher_lm_loss"] < kd0[0]["lm_loss"]


def test_kd_pulls_the_student_towards_the_teacher(alpha_runs):
    kl = {alpha: sum(m["kd_loss"] for m in alpha_runs[f"a{alpha}"][-5:]) / 5 for alpha in (0.0, 0.8)}
    assert kl[0.8] < kl[0.0] * 0.8, kl  # KL(teacher || student) clearly lower with KD


@pytest.mark.multiproc
def test_fused_output_layer_at_tp2_trains_the_one_process_kd_model(text_corpus, text_teacher, tmp_path):
    """The fused output layer + CE + KD (logits made chunk by chunk inside the loss, small chunks
    here) at TP=2 over two gloo ranks with sequence parallelism trains the same model as the
    one-process unfused KD run. (The fused objective against the unfused one and float64, at
    TP=1 and TP=2, loss and gradients: tests/distill/test_fused.py and test_routes.py; unfused
    KD at TP=2: tests/e2e/test_layout_invariance.py, TP=2 x PP=2.)"""
    kd = ["train.steps=4", f"teacher.checkpoint={text_teacher}", "kd.alpha=0.5"]
    mkd(*run(text_corpus, tmp_path / "kd_tp1", *kd))
    mkd(*run(text_corpus, tmp_path / "fused_tp2", *kd, "kd.fused_output_layer=true", "kd.chunk_size=24",
             "parallel.tp=2", "parallel.sequence_parallel=true"), "--nproc", "2")
    fused = read_metrics(tmp_path / "fused_tp2")
    assert len(fused) == 4
    for a, b in zip(read_metrics(tmp_path / "kd_tp1"), fused):
        for key in ("loss", "lm_loss", "kd_loss", "teacher_lm_loss", "teacher_entropy", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a[key], b[key])
        assert abs(a["top1_agreement"] - b["top1_agreement"]) < 1e-6


@pytest.mark.multiproc
def test_pp2_kd_training_equals_pp1(text_corpus, text_teacher, tmp_path):
    results = run_distributed("tests.workers.parallel_parity:training_matches_across_layouts", 2,
                              tmp_path, tp=1, pp=2, steps=3,
                              data=corpus_overrides(text_corpus) + [f"teacher.checkpoint={text_teacher}",
                                                                    "kd.alpha=0.5"])
    r = results[0]
    for a, b in zip(r["reference"], r["parallel"]):
        assert abs(a - b) < 1e-5, r
    for a, b in zip(r["reference_kd"], r["parallel_kd"]):
        assert a > 0 and abs(a - b) < 1e-5, r
    assert abs(r["reference_valid"]["indomain"] - r["parallel_valid"]["indomain"]) < 1e-5


def test_missing_or_mismatched_teacher_fails_clearly(text_corpus, text_teacher, tmp_path, capsys):
    def refused(run_dir, *extra):  # before anything starts: in this process (no subprocess start)
        rc, _, err = mkd_in_process(capsys, *run(text_corpus, run_dir, "train.steps=3", *extra))
        assert rc == 2 and "Traceback" not in err, err[-2000:]
        return err

    err = refused(tmp_path / "x", f"teacher.checkpoint={tmp_path / 'nope'}")
    assert "teacher.checkpoint" in err and "does not exist" in err
    assert not (tmp_path / "x" / "metrics.jsonl").exists()
    err = refused(tmp_path / "y", f"teacher.checkpoint={text_teacher}", "teacher.model=models/cpu-small")
    assert "is another architecture than teacher.model=models/cpu-small" in err
    err = refused(tmp_path / "z", f"teacher.checkpoint={text_teacher}", "model.vocab_size=600")
    assert "true vocabulary: teacher 512 vs student 600" in err
    assert "kd.alpha must be in [0, 1]" in refused(tmp_path / "w", f"teacher.checkpoint={text_teacher}", "kd.alpha=1.5")
    # the teacher is split over the student's pipeline and virtual stages too
    err = refused(tmp_path / "v", f"teacher.checkpoint={text_teacher}", "model.num_layers=8", "parallel.pp=2",
                  "parallel.vpp=4", "--nproc", "2")
    assert "the teacher's model.num_layers=4 is not divisible by parallel.pp x parallel.vpp = 2 x 4" in err
    assert not (tmp_path / "v").exists()


def test_kd_auto_trains_and_logs_its_weights(text_corpus, text_teacher, tmp_path):
    """kd.auto through the CLI: the per-token weights' mean, share and the teacher's advantage in
    metrics.jsonl each step (a fixed-α run has none of them: test_alpha0_is_plain_pretraining)."""
    mkd(*run(text_corpus, tmp_path / "auto", "train.steps=3", f"teacher.checkpoint={text_teacher}", "kd.alpha=1.0",
             "kd.auto.enabled=true", "kd.auto.tau=0.5"))
    rows = read_metrics(tmp_path / "auto")
    assert len(rows) == 3
    for m in rows:
        assert 0.0 < m["kd/alpha_effective"] < 1.0 and 0.0 <= m["kd/auto_share"] <= 1.0
        # a teacher that predicts the data better than the untrained student leads on most tokens
        assert m["kd/teacher_advantage"] > 0 and m["kd/auto_share"] > 0.5
        assert m["alpha"] == 1.0  # the ceiling
