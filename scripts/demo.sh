#!/usr/bin/env bash
# `make demo`: the CPU mini-study of recipes/sweeps/cpu-mini.yaml, sized to end in a finding
# (docs/STUDY.md, "The demo"; its measured time: docs/PERFORMANCE.md, "Measured times").
# corpus -> two teachers: a small one trained long (cpu-micro, 4 epochs of the KJV) and a weak one
# (cpu-tiny stopped at 100 steps) -> the cpu-tiny student distilled from each at alpha 0.2 and 0.8,
# two seeds per point, beside its baselines (200 and 400 steps, both seeds) -> the report.
# The work runs in two lanes, one core each, whose output goes to runs/demo/*.log; meanwhile
# study/follow_logs puts their progress on the terminal. Re-running it skips what is finished.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/sweep_lib.sh
MKD=".venv/bin/mkd"
SWEEP=recipes/sweeps/cpu-mini.yaml
OUT=runs/sweeps/cpu-mini
LOGS=runs/demo
# Tiny models use one core well and two poorly: two runs at a time, one thread each.
export OMP_NUM_THREADS=1

# `scripts/demo.sh lanes`: stage 2 alone, its output in the logs (the follower below runs it).
if [ "${1:-}" = lanes ]; then
  ( $MKD train train/teacher-cpu-micro > $LOGS/teacher-cpu-micro.log 2>&1 &&
    $MKD sweep $SWEEP --local --only '*micro@4ep*' --only '*400steps__seed2' > $LOGS/lane-a.log 2>&1 ) &
  lane_a=$!
  # The weak teacher is cpu-tiny's 100-step checkpoint: stop there (its 300-step schedule kept).
  ( $MKD train train/teacher-cpu-tiny logging.log_interval=50 train.stop_at_step=100 > $LOGS/teacher-cpu-tiny.log 2>&1 &&
    $MKD sweep $SWEEP --local --only '*baseline__*' --only '*tiny@205K*' --only '*400steps__seed1' \
      > $LOGS/lane-b.log 2>&1 ) &
  lane_b=$!
  status=0
  wait "$lane_a" || status=1
  wait "$lane_b" || status=1
  [ "$status" = 0 ] || { tail -n 5 $LOGS/*.log; echo "a lane failed (logs: $LOGS/); run make demo again to resume"; }
  exit "$status"
fi

T0=$SECONDS
echo "== 1. the embedded corpus: KJV (in-domain) and Shakespeare (OOD), tokenized =="
ensure_corpus

echo
echo "== 2. teachers and students, two lanes (one core each; logs in $LOGS/) =="
echo "   lane A: the strong teacher cpu-micro (12K non-embedding parameters, 4 epochs of the KJV),"
echo "           its top-64 cache, its four students (alpha 0.2 and 0.8, seeds 1 and 2), a 400-step baseline"
echo "   lane B: the weak teacher cpu-tiny (stopped at 100 steps), the student's baselines (200 steps,"
echo "           seeds 1 and 2), the weak teacher's cache and its four students, the other 400-step baseline"
echo "   student: cpu-tiny (99K non-embedding parameters), 200 steps x 16 x 128 tokens"
mkdir -p $LOGS "$OUT"
.venv/bin/python -m megatron_kd.study.follow_logs $LOGS/teacher-cpu-micro.log $LOGS/teacher-cpu-tiny.log \
  $LOGS/lane-a.log $LOGS/lane-b.log -- bash scripts/demo.sh lanes
echo "   ($((SECONDS - T0)) s so far)"

echo
echo "== 3. the sweep, complete: teachers evaluated on both sets, the report written =="
$MKD sweep $SWEEP --local > "$OUT.log.txt" 2>&1 \
  || { tail -n 20 "$OUT.log.txt"; echo "the sweep failed; run make demo again to resume"; exit 1; }

echo
echo "== 4. the report ($OUT/report.md, report.json, report.csv, figures) =="
$MKD report "$OUT"
echo
echo "demo done in $((SECONDS - T0)) s"
