#!/usr/bin/env bash
# The CPU mini-study behind `make demo` (about 16 minutes on 2 cores, measured): the paper's question in
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
echo "== 2. teachers: cpu-tiny (0.36M, weaker than the student) and cpu-medium (3.4M) =="
echo "   (the students' no-KD baselines need no teacher: they train beside the teachers)"
SECONDS=0
# One core: the medium teacher. The other: the tiny teacher, then the two baselines.
$MKD train train/teacher-cpu-medium logging.log_interval=100 > runs/teacher-cpu-medium.log 2>&1 &
medium=$!
( $MKD train train/teacher-cpu-tiny logging.log_interval=100 > runs/teacher-cpu-tiny.log 2>&1 &&
  $MKD sweep recipes/sweeps/cpu-mini.yaml --local --jobs 1 --only '*baseline*' > runs/baselines.log 2>&1 ) &
side=$!
wait "$medium" || { tail -5 runs/teacher-cpu-medium.log; exit 1; }
wait "$side" || { tail -5 runs/teacher-cpu-tiny.log runs/baselines.log 2>/dev/null; exit 1; }
grep -h -E "validation|done|complete" runs/teacher-cpu-tiny.log runs/teacher-cpu-medium.log
grep -E "^\[sweep\].*(done|finished)" runs/baselines.log
echo "   (${SECONDS}s)"

echo
echo "== 3. the sweep: cpu-small (1.1M) students, alpha in {0.2, 0.5, 1} x {weak, strong} =="
SECONDS=0
mkdir -p runs/sweeps
$MKD sweep recipes/sweeps/cpu-mini.yaml --local --jobs 2 | tee runs/sweeps/cpu-mini.log.txt | grep --line-buffered -E "^\[sweep\]"
echo "   (${SECONDS}s)"

echo
echo "== 4. the report (runs/sweeps/cpu-mini/report.md, report.csv, *.png) =="
$MKD report runs/sweeps/cpu-mini
