#!/usr/bin/env python
"""OUT/gpu_check.json from what scripts/gpu_check.sh left in OUT: each step's exit status and
seconds, the two benchmarks' rows, and the KD run's throughput (tokens/s/GPU, TFLOP/s/GPU, MFU,
from its metrics.jsonl) and profile (teacher-forward and KD-loss shares, profile.json). Prints
the summary it writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarise(out: Path) -> dict:
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "steps.jsonl").is_file() else []
    summary: dict = {"steps": steps, "passed": bool(steps) and all(s["rc"] == 0 for s in steps)}
    for name in ("kd_loss", "fused_output"):
        summary[name] = _json(out / f"{name}.json")
    metrics = out / "kd" / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        timed = [r for r in rows if "tokens_per_s_per_gpu" in r][1:]  # the first logged step includes warm-up
        last = timed[-1] if timed else (rows[-1] if rows else {})
        summary["kd_run"] = {k: last.get(k) for k in ("step", "loss", "tokens_per_s_per_gpu", "tflops_per_gpu", "mfu")}
        summary["kd_run"]["profile"] = _json(out / "kd" / "profile.json")
    return summary


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_check_out")
    summary = summarise(out)
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    for s in summary["steps"]:
        print(f"{s['step']:<16} {'ok' if s['rc'] == 0 else 'FAILED (exit %d)' % s['rc']:<18} {s['seconds']} s")
    run = summary.get("kd_run")
    if run:
        print(f"KD run: {run['tokens_per_s_per_gpu']} tokens/s/GPU, {run['tflops_per_gpu']} TFLOP/s/GPU, "
              f"MFU {run['mfu']}; profile: {run['profile']}")
    print(f"wrote {out / 'gpu_check.json'}: {'all checks passed' if summary['passed'] else 'some checks failed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
