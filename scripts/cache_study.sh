#!/usr/bin/env bash
# `make cache-study`: which teacher cache to use, measured (recipes/sweeps/cpu-cache.yaml,
# docs/PERFORMANCE.md section 4). corpus -> make study's cpu-small teacher (skipped when trained)
# -> four cache jobs (top-64 fp32 / bf16, top-8 bf16, 12 draws fp16) -> 18 student runs, two at a
# time -> the report (paired per seed against the baseline) and each cache's bytes per token.
# Re-running it resumes: the finished teacher, caches and points are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/sweep_lib.sh
MKD=".venv/bin/mkd"
export OMP_NUM_THREADS=1
SWEEP=recipes/sweeps/cpu-cache.yaml
OUT=runs/sweeps/cpu-cache
T0=$SECONDS

echo "== 1. the embedded corpus =="
ensure_corpus

echo "== 2. the teacher: cpu-small, 1.1M tokens (make study's strongest) =="
mkdir -p runs/study
$MKD train train/study-teacher-small > runs/study/teacher-small.log 2>&1 \
  || { tail -n 5 runs/study/teacher-small.log; exit 1; }
grep -E "^(done|already)" runs/study/teacher-small.log
echo "   ($((SECONDS - T0)) s so far)"

echo "== 3. the sweep: 4 caches, then 18 student runs, two at a time =="
run_sweep "$SWEEP" "$OUT" cache-study

echo "== 4. bytes per token of each cache, and the report ($OUT/report.md) =="
.venv/bin/python - "$OUT" <<'PY'
import json, pathlib, sys
for m in sorted(pathlib.Path(sys.argv[1]).glob("caches/*/manifest.json")):
    d = json.loads(m.read_text())
    print(f"  {m.parent.name:<12} {d['bytes_per_token']:8.1f} B/token  {d.get('encoding')}")
PY
$MKD report "$OUT" > /dev/null && sed -n "/## Paired gains/,/## The paper/p" "$OUT/report.md" | head -n -1
echo "cache study done in $((SECONDS - T0)) s; the full report: $OUT/report.md"
