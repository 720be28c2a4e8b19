"""The benchmark scripts run (tiny sizes, no timing claims): the fused path agrees with the
unfused one inside the benchmark too, and the side-by-side loss table has every implementation."""

import json
import subprocess
import sys

import pytest

from tests.distributed import REPO
from tests.helpers import ENV


def bench(*args, tmp_path, name):
    out = tmp_path / f"{name}.json"
    r = subprocess.run([sys.executable, f"bench/{name}.py", *args, "--json-out", str(out)], cwd=REPO,
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout


@pytest.mark.slow
@pytest.mark.multiproc  # kd_loss at --tp 2
def test_kd_loss_and_fused_output_benchmarks_run(tmp_path):
    res, text = bench("--tp", "1", "2", "--tokens", "64", "--vocab", "512", "--repeats", "1",
                      "--no-modelopt", tmp_path=tmp_path, name="kd_loss")
    for by_tp in res["results"]:
        impls = {(r["dtype"], r["impl"]) for r in by_tp["rows"]}
        assert impls == {(d, i) for d in ("fp32", "bf16") for i in ("megatron_kd", "plain torch")}
        for r in by_tp["rows"]:
            assert r["loss_rel_diff"] < (1e-5 if r["dtype"] == "fp32" else 1e-2), r
    assert "| TP |" in text
    res, _ = bench("--tokens", "64", "128", "--hidden", "16", "--vocab", "512", "--repeats", "1",
                   "--gemm-chunks", "24", tmp_path=tmp_path, name="fused_output")
    diffs = [float(r["diff"]) for r in res["rows"] if "diff" in r]
    assert len(diffs) == 6 and max(diffs) < 1e-5  # separate passes, fused, fused in 24-token chunks


@pytest.mark.slow
def test_kd_step_benchmark_runs(tmp_path):
    res, text = bench("--student", "models/cpu-tiny", "--teacher", "models/cpu-tiny", "--steps", "2",
                      "--warmup", "0", "--seq-length", "32", "--micro-batch", "2", "--global-batch", "4",
                      "--threads", "1", tmp_path=tmp_path, name="kd_step")
    rows = {r["what"]: r for r in res["rows"]}
    assert len(rows) == 10 and "median of 2 rounds" in text  # 4 KD-step variants, 3 from a teacher cache (one compact)
    assert [r["vs"] for n, r in rows.items() if "teacher cache" in n] == ["student step"] * 3
    for name, r in rows.items():
        assert float(r["ms"]) > 0
        if name.startswith("KD step"):
            assert float(r["ratio"]) > 0
