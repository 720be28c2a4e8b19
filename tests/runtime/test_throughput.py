"""FLOP accounting against hand-computed counts, MFU against the peak table, the profiler."""

import pytest

from megatron_kd.config.schema import ModelConfig
from megatron_kd.models.flops import training_flops_per_token
from megatron_kd.runtime.throughput import Profiler, peak_tflops, step_throughput


def test_flops_of_a_llama_config_by_hand():
    m = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4,
                    num_query_groups=2, vocab_size=1000)
    # per layer: q 64*64, k and v 2*64*(2 groups * 16), out 64*64, SwiGLU 3*64*256, the two norms'
    # 2*64 weights (counted as the parameter count does) = 61,568; two layers plus the output
    # projection 1000*64 = 187,136; x6 (forward+backward) = 1,122,816. Causal attention (QK^T and
    # AV): 2 matmuls * 2 FLOPs * 2 layers * 4 heads * 16 dims * 128 positions / 2 = 32,768
    # forward, x3 = 98,304
    assert training_flops_per_token(m, 128) == 1_122_816 + 98_304
    s = step_throughput(tokens=1000, seconds=0.5, world=2, flops_per_token=1e12, peak=989.4)
    assert s["tokens_per_s_per_gpu"] == 1000 and s["tflops_per_gpu"] == 1000
    assert s["mfu"] == pytest.approx(1000 / 989.4)
    assert step_throughput(1000, 0.5, 2, 1e12, None)["mfu"] is None


def test_peak_table():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16", fp8=False) == 989.4
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16", fp8=True) == 1978.9
    assert peak_tflops("NVIDIA H100 PCIe", "bf16", fp8=False) == 756.0
    assert peak_tflops("NVIDIA H200", "bf16", fp8=False) == 989.4
    assert peak_tflops("NVIDIA H200", "fp32", fp8=False) is None  # no MFU for fp32 runs
    assert peak_tflops(None, "bf16", fp8=False) is None  # CPU
    assert peak_tflops("Some GPU", "bf16", fp8=False) is None


def test_profiler_sections_only_while_active():
    p = Profiler()
    with p.section("x"):
        pass
    assert p.totals == {}
    p.start()
    with p.section("x"):
        sum(range(1000))
    with p.section("x"):
        pass
    out = p.stop()
    assert set(out) == {"x"} and out["x"] > 0 and not p.active
