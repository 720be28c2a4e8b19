#!/usr/bin/env bash
# The CPU mini-study behind `make demo` (see README for the measured time on 2 cores): the paper's question in
# miniature. corpus -> tokenizer -> teachers of two strengths (checkpoints at token budgets) ->
# a student distilled from a weak and a strong teacher with alpha in {0.2, 0.5, 1} plus its
# no-KD baseline (two seeds: the noise band) -> in-domain and OOD evaluation -> report + plots.
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
rm -f runs/teacher-cpu-medium.ok runs/teacher-cpu-medium.failed
echo "== 2. teachers and students, in two lanes (one core each) =="
echo "   lane A: cpu-medium teacher (3.4M, strong), then students distilled from it (alpha 0.2, 0.5)"
echo "   lane B: cpu-tiny teacher (0.36M, weaker than the student), the no-KD baselines, the"
echo "           students distilled from the tiny teacher, then the strong teacher's alpha=1 student"
echo "   students: cpu-small (1.1M), alpha in {0.2, 0.5, 1} per teacher; baselines: 2 seeds"
SECONDS=0
SWEEP=recipes/sweeps/cpu-mini.yaml
mkdir -p runs/sweeps
# Lane A: the strong teacher, then two of its students. Lane B: the weak teacher, the baselines,
# the weak teacher's students, then the strong teacher's third student (once lane A's teacher
# is trained): the two lanes end at about the same time.
( if $MKD train train/teacher-cpu-medium logging.log_interval=100 > runs/teacher-cpu-medium.log 2>&1; then
    touch runs/teacher-cpu-medium.ok
    $MKD sweep $SWEEP --local --only '*strong*__a0.2' --only '*strong*__a0.5' > runs/lane-a.log 2>&1
  else touch runs/teacher-cpu-medium.failed; exit 1; fi ) &
lane_a=$!
# The weak teacher is cpu-tiny's 100-step checkpoint: stop there (its 300-step schedule kept).
( $MKD train train/teacher-cpu-tiny logging.log_interval=100 train.stop_at_step=100 > runs/teacher-cpu-tiny.log 2>&1 &&
  $MKD sweep $SWEEP --local --only '*baseline*' --only '*weak*' > runs/lane-b.log 2>&1 &&
  until [ -e runs/teacher-cpu-medium.ok ] || [ -e runs/teacher-cpu-medium.failed ]; do sleep 2; done &&
  [ -e runs/teacher-cpu-medium.ok ] &&
  $MKD sweep $SWEEP --local --only '*strong*__a1' >> runs/lane-b.log 2>&1 ) &
lane_b=$!
status=0
wait "$lane_a" || status=1
wait "$lane_b" || status=1
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
