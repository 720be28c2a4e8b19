#!/usr/bin/env bash
# `make study`: the paper's four claims at toy scale (recipes/sweeps/cpu-study.yaml, docs/STUDY.md).
# corpus -> three teachers (micro < tiny = student < small), each one run with checkpoints at three
# token budgets -> one teacher pass per teacher checkpoint into a top-64 cache -> 111 student runs
# (alpha 0.2 / 0.5 / 1 / 1->0 cosine x 3 seeds, 3 baseline seeds), two at a time -> report.
# Re-running it resumes: finished teachers, caches and points are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/sweep_lib.sh
MKD=".venv/bin/mkd"
export OMP_NUM_THREADS=1   # tiny models: two single-threaded runs beat one two-threaded run
SWEEP=recipes/sweeps/cpu-study.yaml
OUT=runs/sweeps/cpu-study
T0=$SECONDS

echo "== 1. the embedded corpus: KJV (in-domain) and Shakespeare (OOD) =="
ensure_corpus

echo
echo "== 2. the teacher zoo: cpu-micro, cpu-tiny, cpu-small, checkpoints at 123K / 369K / 1.1M tokens =="
mkdir -p runs/study
teacher() { $MKD train "train/study-teacher-$1" > "runs/study/teacher-$1.log" 2>&1 \
            || { tail -n 5 "runs/study/teacher-$1.log"; return 1; }; grep -E "^(done|already)" "runs/study/teacher-$1.log"; }
# lane A: the larger teacher (the longest); lane B: the two small ones
( teacher small ) & lane_a=$!
( teacher micro && teacher tiny ) & lane_b=$!
status=0
wait "$lane_a" || status=1
wait "$lane_b" || status=1
[ "$status" = 0 ] || exit 1
echo "   ($((SECONDS - T0)) s so far)"

echo
echo "== 3. the sweep: 9 teacher caches, then 111 student runs, two at a time =="
run_sweep "$SWEEP" "$OUT" study
echo "   runs finished: $(grep -c -E '(done|already complete|finished, skipped)' "$OUT.log.txt")"
echo "   ($((SECONDS - T0)) s so far)"

echo
echo "== 4. the report ($OUT/report.md, report.csv, *.png) =="
$MKD report "$OUT" | sed -n '/## The paper/,$p'
echo
echo "study done in $((SECONDS - T0)) s; the full report: $OUT/report.md"
