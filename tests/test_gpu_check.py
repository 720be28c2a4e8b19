"""scripts/gpu_check.sh: its --dry-run on this CPU machine (the plan, the 8-minute budget, the
recipes of its KD run validate) and the summary it writes from a finished check's files."""

import json
import subprocess
import sys

from tests.distributed import REPO
from tests.helpers import ENV


def test_dry_run_prints_the_plan_within_eight_minutes():
    r = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--out", "/tmp/gpu-out"], cwd=REPO,
                       env={**ENV, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    steps = [line.split()[1] for line in lines if line[:1].isdigit() and ". " in line[:4]]
    assert steps == ["install", "environment", "numerics", "kd_loss", "fused_output", "teacher_weights", "kd_run",
                     "moe_kd"]
    total = int(next(line for line in lines if line.startswith("time allowed")).split()[4])
    assert total <= 8 * 60
    assert "--vocab 131072" in r.stdout and "--dtypes bf16" in r.stdout and "--profile-steps" in r.stdout
    assert "MKD_TEST_DEVICE=cuda" in r.stdout and "/tmp/gpu-out/kd_loss.json" in r.stdout
    assert "recipes: train/gpu-check-teacher and kd/gpu-check validate" in r.stdout
    assert not (REPO / "gpu_check_out").exists()
    bad = subprocess.run(["bash", "scripts/gpu_check.sh", "--bogus"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument --bogus" in bad.stderr


def test_summary_collects_steps_benchmarks_and_the_kd_run(tmp_path):
    (tmp_path / "steps.jsonl").write_text('{"step": "install", "rc": 0, "seconds": 3.1}\n'
                                          '{"step": "kd_run", "rc": 0, "seconds": 80.0}\n')
    (tmp_path / "kd_loss.json").write_text(json.dumps({"rows": [{"impl": "ours", "ms": 1.0}]}))
    (tmp_path / "kd").mkdir()
    rows = [{"step": 5, "loss": 9.0, "tokens_per_s_per_gpu": 1.0, "tflops_per_gpu": 1.0, "mfu": 0.01},
            {"step": 10, "loss": 8.0, "tokens_per_s_per_gpu": 90000.0, "tflops_per_gpu": 300.0, "mfu": 0.3}]
    (tmp_path / "kd" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "kd" / "profile.json").write_text(json.dumps({"teacher_forward_share": 0.4}))
    r = subprocess.run([sys.executable, "scripts/gpu_check_summary.py", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "gpu_check.json").read_text())
    assert s["passed"] and s["kd_loss"]["rows"][0]["impl"] == "ours" and s["fused_output"] is None
    assert s["kd_run"]["mfu"] == 0.3 and s["kd_run"]["profile"]["teacher_forward_share"] == 0.4
    assert "90000.0 tokens/s/GPU" in r.stdout and "all checks passed" in r.stdout
