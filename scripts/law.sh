#!/usr/bin/env bash
# `make law`: the runs of recipes/sweeps/cpu-law.yaml (3 student sizes x 3 lengths, 5 teachers
# from the sweep's own baselines), then `mkd fit` on them and `mkd advise` at a toy budget
# (docs/scaling-law.md). Re-running it resumes: finished runs and caches are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/sweep_lib.sh
MKD=".venv/bin/mkd"
export OMP_NUM_THREADS=1   # tiny models: two single-threaded runs beat one two-threaded run
SWEEP=recipes/sweeps/cpu-law.yaml
OUT=runs/sweeps/cpu-law
T0=$SECONDS

echo "== 1. the embedded corpus: KJV (in-domain) and Shakespeare (OOD) =="
ensure_corpus

echo
echo "== 2. the sweep: 9 teacher/student baselines first, 5 teacher caches, then the other 54 runs, two at a time =="
run_sweep "$SWEEP" "$OUT" law
echo "   ($((SECONDS - T0)) s so far)"

echo
echo "== 3. the law: mkd fit $OUT --out $OUT/law.json =="
$MKD fit "$OUT" --out "$OUT/law.json"

echo
echo "== 4. mkd advise at the budget of one cpu-tiny student at 400 steps (no teacher yet) =="
# The budget in the report's currency (models/flops.py: 6 N D for training, 2 N D for a teacher
# pass, N the model's FLOP parameters, as mkd fit and mkd advise count), and the existing teacher
# (small@400: its FLOP parameters and loss), from the sweep's own table.
read -r BUDGET N_T L_T < <(.venv/bin/python - "$OUT/report.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
tiny = next(r for r in rows if r["run"] == "cpu-tiny-400steps__baseline")
kd = next(r for r in rows if r["teacher"] == "small@400")
print(float(tiny["flops"]), float(kd["teacher_pass_flops"]) / (2 * float(kd["student_tokens"])),
      kd["teacher_val/indomain"])
PY
)
$MKD advise "$OUT/law.json" --flops "$BUDGET"
echo
echo "== 5. the same budget with small@400 already trained (N_T = $N_T, loss $L_T), serving one student =="
$MKD advise "$OUT/law.json" --flops "$BUDGET" --teacher "$N_T" "$L_T"
echo
echo "law done in $((SECONDS - T0)) s; the sweep's report: $OUT/report.md, the law: $OUT/law.json"
