#!/usr/bin/env bash
# Study v3 (docs/STUDY.md), kept runnable: `bash scripts/study-v3.sh`. `make study` runs study v4. corpus -> five teachers,
# each annealed to its own budget (recipes/train/study3-teacher-*) -> two sweeps of a cpu-tiny
# student: short (300 steps, 0.55 epoch: 6 teachers incl. the unigram control x alpha 0.2/0.5/0.8
# x 2 seeds, baselines at 150/300/1200 steps) and long (600 steps, 1.1 epochs: 4 teachers) -> the
# two reports. Each teacher pass is cached once per regime. Re-running it resumes: finished
# teachers, caches and points are skipped. (Study v2: recipes/sweeps/cpu-study.yaml, by hand.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/sweep_lib.sh
MKD=".venv/bin/mkd"
export OMP_NUM_THREADS=1   # tiny models: two single-threaded runs beat one two-threaded run
T0=$SECONDS

echo "== 1. the embedded corpus: KJV (in-domain), Shakespeare (OOD, split into dev and test) =="
ensure_corpus

echo
echo "== 2. five teachers: small@0.3ep, small@1ep, tiny@1ep, tiny@4ep, micro@4ep (two at a time) =="
mkdir -p runs/study3
teacher() { $MKD train "train/study3-teacher-$1" > "runs/study3/teacher-$1.log" 2>&1 \
            || { echo "teacher $1 failed:"; tail -n 5 "runs/study3/teacher-$1.log"; return 1; }
            echo "   $1: $(grep -E '^(done|already)' "runs/study3/teacher-$1.log" | tail -n 1)"; }
export -f teacher; export MKD
# longest first, so the two lanes end together
printf '%s\n' tiny-4ep small-1ep micro-4ep tiny-1ep small-03ep \
  | xargs -P 2 -I{} bash -c 'teacher {}' || { echo "a teacher failed; run make study again to resume"; exit 1; }
echo "   ($((SECONDS - T0)) s so far)"

for regime in short long; do
  echo
  echo "== 3. the $regime regime: recipes/sweeps/cpu-study-v3-$regime.yaml, two runs at a time =="
  run_sweep "recipes/sweeps/cpu-study-v3-$regime.yaml" "runs/sweeps/cpu-study-v3-$regime" study
  echo "   ($((SECONDS - T0)) s so far)"
done

for regime in short long; do
  echo
  echo "== 4. the $regime regime's report (runs/sweeps/cpu-study-v3-$regime/report.md) =="
  $MKD report "runs/sweeps/cpu-study-v3-$regime" | sed -n '/## The paper/,$p'
done
echo
echo "study done in $((SECONDS - T0)) s"
