#!/usr/bin/env bash
# The CPU mini-study behind `make demo` (~12 minutes on 2 cores): the paper's question in
# miniature. corpus -> tokenizer -> teachers of two strengths (checkpoints at token budgets) ->
# a student distilled from a weak and a strong teacher with alpha in {0.2, 0.5, 1} plus its
# no-KD baseline (two seeds: the noise band) -> in-domain and OOD evaluation -> report + plots.
# Re-running it skips what is finished.
set -euo pipefail
cd "$(dirname "$0")/.."
MKD=".venv/bin/mkd"
# Every run here is one process: let torch use both cores (the Makefile's default of 1 thread is
# for the tests, whose gloo ranks share the cores).
export OMP_NUM_THREADS="${DEMO_THREADS:-2}"

echo "== 1. the embedded corpus: KJV (in-domain) and Shakespeare (OOD), tokenized =="
if [ -f data/corpus/corpus.json ]; then echo "(already built: data/corpus)"; else $MKD data corpus --out data/corpus; fi

echo
echo "== 2. teachers: cpu-tiny (0.36M, weaker than the student) and cpu-medium (3.4M) =="
$MKD train train/teacher-cpu-tiny logging.log_interval=100
$MKD train train/teacher-cpu-medium logging.log_interval=100

echo
echo "== 3. the sweep: cpu-small (1.1M) students, alpha in {0.2, 0.5, 1} x {weak, strong} + baselines =="
mkdir -p runs/sweeps
$MKD sweep recipes/sweeps/cpu-mini.yaml --local | tee runs/sweeps/cpu-mini.log.txt | grep --line-buffered -E "^\[sweep\]"

echo
echo "== 4. the report (runs/sweeps/cpu-mini/report.md, report.csv, *.png) =="
$MKD report runs/sweeps/cpu-mini
