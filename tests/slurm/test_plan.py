"""`mkd plan`: the paper's H100 layouts fit 80 GB; an over-budget run gets a layout that fits."""

import pytest

from megatron_kd.config import load_config
from megatron_kd.slurm.plan import GiB, estimate
from tests.helpers import mkd


def plan(*args):
    return mkd("plan", *args, timeout=120, check=False)


@pytest.mark.parametrize("pair", ["0.5b", "1b", "3b", "8b"])
def test_paper_pairs_fit_h100(pair):
    r = plan(f"kd/paper-{pair}-to-1b", "--gpus", "32")
    assert r.returncode == 0 and "fits" in r.stdout, r.stdout + r.stderr
    assert "teacher weights" in r.stdout


def _part(out: str, name: str) -> float:
    return float(next(line for line in out.splitlines() if line.strip().startswith(name)).split()[-2])


@pytest.mark.slow  # searches every layout of a large model
def test_over_budget_suggests_a_layout():
    # 8 x 8192 tokens x 128k vocabulary: the two models' bf16 logits alone are 32 GiB at TP=1
    r = plan("kd/paper-8b-to-1b", "train.micro_batch_size=8", "--gpus", "32")
    assert r.returncode == 5 and "DOES NOT FIT" in r.stdout and "suggested: tp=2" in r.stdout
    assert _part(r.stdout, "logits (last stage)") == 31.62
    # the fused output layer never holds them: one output-layer chunk of each
    r = plan("kd/paper-8b-to-1b", "train.micro_batch_size=8", "kd.fused_output_layer=true", "--gpus", "32")
    assert _part(r.stdout, "logits (last stage)") < 1, r.stdout + r.stderr
    # at 4 x 8192 tokens (16 GiB of logits) the run fits at TP=1 either way
    r = plan("kd/paper-8b-to-1b", "train.micro_batch_size=4", "--gpus", "32")
    assert r.returncode == 0 and "fits" in r.stdout, r.stdout + r.stderr


def test_estimate_scales_with_layout():
    cfg = load_config("train/llama3-1b-paper")
    teacher = load_config("models/llama3-8b", purpose="model").model
    one = estimate(cfg, teacher, 32)
    tp2 = estimate(cfg, teacher, 32, tp=2)
    assert tp2.parts["teacher weights"] == pytest.approx(one.parts["teacher weights"] / 2, rel=0.01)
    assert 8e9 * 2 / GiB * 0.9 < one.parts["teacher weights"] / GiB < 8.1e9 * 2 / GiB
    assert "teacher weights" not in estimate(cfg, None, 32).parts


def test_interleaved_pipeline_in_the_plan():
    cfg = load_config("kd/paper-8b-to-1b", ["parallel.pp=2"])
    teacher = load_config("models/llama3-8b", purpose="model").model
    one_f_one_b, student_only = estimate(cfg, teacher, 8), estimate(cfg, None, 8)
    cfg.parallel.vpp = 4  # 16 student / 32 teacher layers: 2 x 4 chunks of 2 / 4 layers
    interleaved, interleaved_student = estimate(cfg, teacher, 8), estimate(cfg, None, 8)
    # 1 + (PP-1)/(PP x VPP) = 1.125 times the 1F1B activations; weights as at PP=2
    assert interleaved_student.parts["activations"] == pytest.approx(student_only.parts["activations"] * 1.125)
    assert interleaved.parts["teacher weights"] == one_f_one_b.parts["teacher weights"]
    # the teacher's hidden states ride in the stage messages: 8192 x 1 x 4096 bf16 per micro-batch in
    # flight (PP x 1.125 of them)
    extra = (interleaved.parts["activations"] - interleaved_student.parts["activations"]) \
        - (one_f_one_b.parts["activations"] - student_only.parts["activations"])
    assert extra == pytest.approx(2 * 0.125 * 8192 * 4096 * 2)
    r = plan("kd/paper-8b-to-1b", "parallel.pp=2", "parallel.vpp=4", "--gpus", "8")
    assert r.returncode == 0 and "tp=1 pp=2 vpp=4 dp=4" in r.stdout, r.stdout + r.stderr
    # 256 / (1 x 4) = 64 micro-batches: bubble 1 / (4 x 64)
    assert "interleaved 1F1B, 4 virtual stages per rank, 64 micro-batches a step; bubble (PP-1)/(VPP x M) = 0.4%" \
        in r.stdout
    r = plan("kd/paper-8b-to-1b", "parallel.pp=2", "--gpus", "8")
    assert "1F1B, 64 micro-batches a step; bubble (PP-1)/(VPP x M) = 1.6% of the step; parallel.vpp=2 halves it" \
        in r.stdout


def test_cache_sizes_per_encoding_and_the_paper_grid():
    """The cache lines of `mkd plan` (in process: no launch): fp32 and fp16 per K with the
    vocabulary's id width, and the 28-checkpoint grid's total."""
    from megatron_kd.distill.teacher import teacher_model
    from megatron_kd.slurm.plan import cache_lines

    cfg = load_config("kd/paper-8b-to-1b")
    lines = cache_lines(cfg, teacher_model(cfg), 6)
    assert "17-bit ids" in lines[0] and "50.00B tokens" in lines[0]
    top8 = next(line for line in lines if line.strip().startswith("top-8 "))
    assert "fp32      61.0 B/token" in top8 and "fp16      39.0 B/token" in top8  # 8 x (2 + 17/8) + 3 x 2
    grid = next(line for line in lines if "paper's grid" in line)
    assert "top-8 49.7 TiB" in grid  # 39 B x 50e9 tokens x 28 checkpoints
    sampled = next(line for line in lines if "sampled" in line)
    assert "35.5 B/token" in sampled and "4-bit counts" in sampled  # 12 x (17 + 4) bits + 2 x 2 B


def test_a_teacher_signal_without_a_model_counts_its_logits():
    """KD from a cache or the unigram (no teacher model): the student's logits and a loss chunk's
    temporaries, plus fp32 teacher logits only where the objective needs them dense."""
    cfg = load_config("kd/paper-8b-to-1b")
    cfg.teacher.checkpoint, cfg.teacher.cache = None, "/nowhere/cache"
    from megatron_kd.config import padded_vocab

    tokens, v = cfg.train.seq_length * cfg.train.micro_batch_size, padded_vocab(cfg.model, 1)
    supervised = estimate(load_config("train/llama3-1b-paper"), None, 32).parts["logits (last stage)"]
    cfg.kd.top_k, cfg.kd.kind = 64, "forward_kl"
    sparse = estimate(cfg, None, 32).parts["logits (last stage)"]
    cfg.kd.top_k = None
    dense = estimate(cfg, None, 32).parts["logits (last stage)"]
    temps = dense - tokens * v * (2 + 4)
    assert temps > 0 and temps % (v * 20) == 0 and temps // (v * 20) <= tokens  # a chunk of rows x 5 fp32
    assert sparse == pytest.approx(tokens * v * 2 + temps)  # no teacher logits: the sparse objective
    assert supervised == pytest.approx(tokens * v * (2 + 4))  # bf16 logits + megatron-core's fp32 copy
    cfg.teacher.cache, cfg.teacher.unigram = None, True
    assert estimate(cfg, None, 32).parts["logits (last stage)"] == dense


def test_an_moe_teacher_is_counted_by_its_experts_split_over_ep():
    from megatron_kd.distill.teacher import teacher_model
    from megatron_kd.slurm.plan import expert_lines

    cfg = load_config("kd/paper-qwen3-30b-a3b-to-1b")
    teacher = teacher_model(cfg)
    [line] = expert_lines(cfg, teacher)
    assert "30.53B parameters, 3.35B active per token (128 experts, top-8)" in line and f"ep={cfg.parallel.ep}" in line
    wide = estimate(cfg, teacher, 8).parts["teacher weights"]
    at_ep1 = load_config("kd/paper-qwen3-30b-a3b-to-1b", ["parallel.ep=1"])
    one_ep = estimate(at_ep1, teacher, 8).parts["teacher weights"]
    assert one_ep / wide > 4  # the routed experts (95 % of the weights) split over EP
