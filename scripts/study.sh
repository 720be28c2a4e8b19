#!/usr/bin/env bash
# `make study`: study v4, the pre-registered design of docs/STUDY.md. The corpus with the wisdom
# books held out (data/corpus-v4: the near-OOD set) -> six teachers, each annealed to its own
# budget (recipes/train/study4-teacher-*: the weak-teacher ladder and a strong tiny@600) -> one
# sweep of a cpu-tiny student (recipes/sweeps/cpu-study-v4.yaml: 6 teachers x alpha
# 0.1/0.2/0.35/0.6/1.0 and one kd.auto point x 4 seeds, baselines at 150/300/600 steps) -> its
# report and results table. Each teacher pass is cached once.
# Re-running it resumes: finished teachers, caches and points are skipped. (Study v3:
# scripts/study-v3.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/sweep_lib.sh
MKD=".venv/bin/mkd"
export OMP_NUM_THREADS=1   # tiny models: two single-threaded runs beat one two-threaded run
T0=$SECONDS

echo "== 1. the corpus with the wisdom books (Job to the Song of Solomon) held out: data/corpus-v4 =="
if [ -f data/corpus-v4/corpus.json ]; then echo "(already built: data/corpus-v4)"
else $MKD data corpus --out data/corpus-v4 --hold-out-books wisdom; fi

echo
echo "== 2. the teachers: the weak-teacher ladder micro@300/350/400/500, tiny@300, and tiny@600 (two at a time) =="
mkdir -p runs/study4
teacher() { $MKD train "train/study4-teacher-$1" > "runs/study4/teacher-$1.log" 2>&1 \
            || { echo "teacher $1 failed:"; tail -n 5 "runs/study4/teacher-$1.log"; return 1; }
            echo "   $1: $(grep -E '^(done|already)' "runs/study4/teacher-$1.log" | tail -n 1)"; }
export -f teacher; export MKD
printf '%s\n' tiny-600 micro-500 tiny-300 micro-400 micro-350 micro-300 \
  | xargs -P 2 -I{} bash -c 'teacher {}' || { echo "a teacher failed; run make study again to resume"; exit 1; }
echo "   ($((SECONDS - T0)) s so far)"

echo
echo "== 3. the sweep: recipes/sweeps/cpu-study-v4.yaml, two runs at a time =="
run_sweep recipes/sweeps/cpu-study-v4.yaml runs/sweeps/cpu-study-v4 study
echo "   ($((SECONDS - T0)) s so far)"

echo
echo "== 4. the report and the results table (runs/sweeps/cpu-study-v4/report.md, report.csv) =="
$MKD report runs/sweeps/cpu-study-v4
echo
echo "study done in $((SECONDS - T0)) s"
