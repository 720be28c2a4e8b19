#!/usr/bin/env bash
# The CPU mini-study behind `make demo` (see README for the measured time on 2 cores): the paper's question in
# miniature. corpus -> tokenizer -> two teachers (the larger one checkpointed at three token
# budgets) -> a student distilled from each teacher checkpoint with alpha in {0.2, 0.5, 1} plus
# its no-KD baseline (two seeds: the noise band) -> in-domain and OOD evaluation -> report + plots.
# Re-running it skips what is finished.
set -euo pipefail
cd "$(dirname "$0")/.."
MKD=".venv/bin/mkd"
# Tiny models use one core well and two poorly: two runs at a time, one thread each.
export OMP_NUM_THREADS=1

echo "== 1. the embedded corpus: KJV (in-domain) and Shakespeare (OOD), tokenized =="
if [ -f data/corpus/corpus.json ]; then echo "(already built: data/corpus)"; else $MKD data corpus --out data/corpus; fi

echo
mkdir -p runs
echo "== 2. teachers and students: two lanes (one core each), then the rest two at a time =="
echo "   lane A: cpu-medium teacher (3.4M, larger than the student; checkpoints at 50, 100, 250 steps),"
echo "           then the students of its 100-step checkpoint and one of its 250-step checkpoint"
echo "   lane B: cpu-tiny teacher (0.36M, weaker than the student), the no-KD baselines (2 seeds, and"
echo "           one of 160 steps: the supervised frontier), the"
echo "           students distilled from the tiny teacher, then from cpu-medium's 50-step checkpoint"
echo "   then:   the other two students of cpu-medium's 250-step checkpoint, side by side"
echo "   students: cpu-small (1.1M), alpha in {0.2, 0.5, 1} per teacher, each teacher checkpoint run once"
echo "   into a top-64 cache that its three students read"
SECONDS=0
SWEEP=recipes/sweeps/cpu-mini.yaml
mkdir -p runs/sweeps
( $MKD train train/teacher-cpu-medium logging.log_interval=100 > runs/teacher-cpu-medium.log 2>&1 &&
  $MKD sweep $SWEEP --local --only '*medium@205K*' --only '*medium@512K__a1' > runs/lane-a.log 2>&1 ) &
lane_a=$!
# The weak teacher is cpu-tiny's 100-step checkpoint: stop there (its 300-step schedule kept).
# Then cpu-medium's first budget (50 steps) is on disk (a checkpoint's state file is written
# last): its students fill lane B while lane A's teacher trains on (the lanes end together).
FIRST=runs/teachers/cpu-medium/checkpoints/tokens_102400/mkd_state.json
( $MKD train train/teacher-cpu-tiny logging.log_interval=100 train.stop_at_step=100 > runs/teacher-cpu-tiny.log 2>&1 &&
  $MKD sweep $SWEEP --local --only '*baseline*' --only '*tiny@*' > runs/lane-b.log 2>&1 &&
  until [ -e "$FIRST" ] || ! kill -0 "$lane_a" 2>/dev/null; do sleep 2; done && [ -e "$FIRST" ] &&
  $MKD sweep $SWEEP --local --only '*medium@102K*' >> runs/lane-b.log 2>&1 ) &
lane_b=$!
status=0
wait "$lane_a" || status=1
wait "$lane_b" || status=1
if [ "$status" = 0 ]; then
  $MKD sweep $SWEEP --local --jobs 2 --only '*medium@*' >> runs/lane-a.log 2>&1 || status=1
fi
grep -h -E "validation|^done" runs/teacher-cpu-tiny.log runs/teacher-cpu-medium.log || true
grep -h -E "^\[sweep\].*(done|finished)" runs/lane-a.log runs/lane-b.log 2>/dev/null || true
if [ "$status" != 0 ]; then
  tail -n 5 runs/teacher-cpu-*.log runs/lane-*.log 2>/dev/null; exit 1
fi
echo "   (${SECONDS}s)"

echo
echo "== 3. the sweep, complete: teachers evaluated on both sets (every run above is skipped) =="
$MKD sweep $SWEEP --local > runs/sweeps/cpu-mini.log.txt 2>&1 || { tail -n 20 runs/sweeps/cpu-mini.log.txt; exit 1; }
grep -c "finished, skipped" runs/sweeps/cpu-mini.log.txt | sed 's/^/   runs finished: /'

echo
echo "== 4. the report (runs/sweeps/cpu-mini/report.md, report.csv, *.png) =="
$MKD report runs/sweeps/cpu-mini
