#!/usr/bin/env bash
# The CPU demo behind `make demo`: what megatron_kd does today, end to end on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
MKD=".venv/bin/mkd"
OUT="${DEMO_DIR:-runs/demo}"

echo "== the paper's student, as megatron_kd builds it =="
$MKD info models/llama3-1b
echo
echo "== pretrain the tiny model on megatron-core's mock data, one process =="
$MKD train train/tiny-mock train.steps=20 run.dir="$OUT/tp1"
echo
echo "== the same run with tensor parallelism over 2 gloo processes (same losses) =="
$MKD train train/tiny-mock train.steps=20 parallel.tp=2 run.dir="$OUT/tp2" --nproc 2
echo
echo "== pipeline parallelism over 2 processes =="
$MKD train train/tiny-mock train.steps=20 parallel.pp=2 run.dir="$OUT/pp2" --nproc 2
echo
echo "resolved configs: $OUT/*/config.yaml"
