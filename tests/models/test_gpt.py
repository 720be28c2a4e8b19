"""GPTModel building from recipes: sizes, tied/untied, QK-norm, dtypes, FP8 gating."""

import pytest

from megatron_kd.config import load_config
from megatron_kd.errors import SetupError
from megatron_kd.models.gpt import check_fp8_available, have_transformer_engine
from tests.distributed import run_distributed


@pytest.mark.multiproc  # one rank, but through run_distributed (a subprocess: the CPU layer patches torch)
def test_built_models_match_analytic_counts(tmp_path):
    (r,) = run_distributed("tests.workers.models:build_and_count", 1, tmp_path)
    assert r["cpu_layer_active"]
    for name in ("llama_untied", "qwen_tied_qknorm", "bf16", "moe", "moe_shared_second_layer"):
        assert r[name]["built"] == r[name]["analytic"], (name, r[name])
        assert r[name]["logits_shape"] == [2, 8, 256] and r[name]["finite"]
    assert r["qwen_tied_qknorm"]["built"] < r["llama_untied"]["built"]  # one embedding fewer
    assert r["bf16"]["dtype"] == "torch.bfloat16"
    assert r["llama_untied"]["dtype"] == "torch.float32"


@pytest.mark.skipif(have_transformer_engine(), reason="Transformer Engine present")
def test_fp8_without_transformer_engine_is_a_clear_error():
    cfg = load_config("train/llama3-1b-mock-h100")
    with pytest.raises(SetupError, match=r"precision.fp8=hybrid needs Transformer Engine on a CUDA GPU"
                                         r".*set precision.fp8=null"):
        check_fp8_available(cfg.precision)
