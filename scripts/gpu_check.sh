#!/usr/bin/env bash
# Everything that needs a GPU, in one script, for a single-GPU H100/H200 machine that has only
# Python 3.12, CUDA torch and triton and no network (docs/PERFORMANCE.md, section "GPU check").
# What else it needs travels with the repository in gpu_bundle/ (git-ignored, a few MiB): run
# `make gpu-bundle` on a machine with PyPI access first (megatron-core's cp312 wheel and the pure
# Python packages the checks import; Transformer Engine does not fit and is not needed here).
#
#   scripts/gpu_check.sh             # run every check (under 8 minutes on one H100/H200)
#   scripts/gpu_check.sh --dry-run   # print the plan and check what can be checked without a GPU
#   scripts/gpu_check.sh --out DIR   # where the JSON, the log and the run go (default gpu_check_out)
#
# Checks: 1. the bundle installs into gpu_bundle/site (no network) and imports with CUDA;
# 2. the KD numerics tests on CUDA (losses, one-pass objective, fused output layer, sparse/cached
# objective) against float64; 3. bench/kd_loss.py and 4. bench/fused_output.py at 8192 tokens x
# a 131072 vocabulary in bf16 (ours vs plain torch: time and peak memory); 5. a 50-step bf16 KD
# run of a ~140M student from a ~390M teacher on one GPU (NCCL) with tokens/s/GPU, MFU and the
# teacher-forward / KD-loss shares (--profile-steps); 6. mixture of experts on CUDA: an MoE teacher
# distilled into an MoE student (bf16, the alltoall dispatcher, the router's aux loss; Transformer
# Engine's grouped GEMM and FP8 are not in the bundle). It writes OUT/gpu_check.json (every step's
# status, seconds and numbers) and OUT/gpu_check.log (everything printed).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
OUT=gpu_check_out
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
BUNDLE=gpu_bundle
SITE=$BUNDLE/site
export PYTHONPATH="$PWD:$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=8 TORCH_NCCL_ASYNC_ERROR_HANDLING=1

# name | seconds allowed | command
STEPS=(
  "install|30|$PY -m pip install --quiet --no-index --no-deps --target $SITE $BUNDLE/wheels/*.whl"
  "environment|30|$PY -c 'import torch, megatron.core, megatron_kd; assert torch.cuda.is_available(), \"no CUDA device\"; print(\"torch\", torch.__version__, \"| megatron-core\", megatron.core.__version__, \"|\", torch.cuda.get_device_name(0))'"
  "numerics|110|MKD_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider -m 'not slow and not multiproc' tests/distill/test_losses.py tests/distill/test_objective.py tests/distill/test_fused.py tests/distill/test_sparse.py"
  "kd_loss|60|$PY bench/kd_loss.py --device cuda --tokens 8192 --vocab 131072 --dtypes bf16 --tp 1 --no-modelopt --repeats 5 --json-out $OUT/kd_loss.json"
  "fused_output|60|$PY bench/fused_output.py --device cuda --tokens 8192 --hidden 2048 --vocab 131072 --dtype bf16 --repeats 5 --json-out $OUT/fused_output.json"
  "teacher_weights|40|$PY -m megatron_kd init train/gpu-check-teacher --out $OUT/teacher"
  "kd_run|120|$PY -m megatron_kd train kd/gpu-check run.dir=$OUT/kd teacher.checkpoint=$OUT/teacher --profile-steps 10"
  "moe_kd|30|$PY -m megatron_kd init train/tiny-mock model.moe.num_experts=4 model.moe.ffn_hidden_size=128 --out $OUT/moe_teacher && $PY -m megatron_kd train train/tiny-mock precision.dtype=bf16 train.steps=20 teacher.checkpoint=$OUT/moe_teacher kd.alpha=0.5 model.moe.num_experts=4 model.moe.ffn_hidden_size=128 model.moe.aux_loss_coeff=0.01 run.dir=$OUT/moe_kd"
)

if [ "$DRY" = 1 ]; then
  echo "gpu_check plan (--dry-run: nothing runs; output would go to $OUT/gpu_check.json and $OUT/gpu_check.log)"
  total=0
  i=1
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name secs cmd <<< "$s"
    printf '%d. %-16s (at most %3s s)  %s\n' "$i" "$name" "$secs" "$cmd"
    total=$((total + secs)); i=$((i + 1))
  done
  echo "time allowed in all: $total s (each step is stopped at its limit)"
  if ls $BUNDLE/wheels/*.whl >/dev/null 2>&1; then
    echo "bundle: $(ls $BUNDLE/wheels/*.whl | wc -l) wheels, $(du -sm $BUNDLE/wheels | cut -f1) MiB in $BUNDLE/wheels"
  else
    echo "bundle: missing ($BUNDLE/wheels); run \`make gpu-bundle\` where PyPI is reachable"
  fi
  # What can be checked here: the recipes of the KD run resolve and validate.
  for r in train/gpu-check-teacher kd/gpu-check; do
    $PY -m megatron_kd config "$r" > /dev/null || { echo "recipe $r does not validate" >&2; exit 1; }
  done
  echo "recipes: train/gpu-check-teacher and kd/gpu-check validate"
  exit 0
fi

mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
RESULTS="$OUT/steps.jsonl"
: > "$RESULTS"
status=0
for s in "${STEPS[@]}"; do
  IFS='|' read -r name secs cmd <<< "$s"
  echo "== $name: $cmd" | tee -a "$LOG"
  t0=$EPOCHREALTIME
  timeout "$secs" bash -c "$cmd" >> "$LOG" 2>&1
  rc=$?
  dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  echo "   -> exit $rc in ${dt}s" | tee -a "$LOG"
  printf '{"step": "%s", "rc": %d, "seconds": %s}\n' "$name" "$rc" "$dt" >> "$RESULTS"
  [ "$rc" = 0 ] || status=1
  if [ "$rc" != 0 ] && { [ "$name" = install ] || [ "$name" = environment ]; }; then break; fi
done
$PY scripts/gpu_check_summary.py "$OUT" | tee -a "$LOG"
exit $status
