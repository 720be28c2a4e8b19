"""Rebuild the results table (study/table.py's format) of the cpu-study runs of 2026-12-02 from
the per-run table of their report (docs/study/report.md, four decimals per loss), so that the
corrected statistics can read those runs without re-running them:

    python scripts/study_results_table.py docs/study/report.md docs/study/results.csv
    mkd report --table docs/study/results.csv --out docs/study/v3

Parameters and FLOPs are recomputed from the model recipes (the report printed them rounded);
the student trained 300 steps x 16 x 128 tokens, data seed 7 (recipes/sweeps/cpu-study.yaml)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from megatron_kd.config import load_config
from megatron_kd.models.flops import training_flops_per_token
from megatron_kd.models.params import count_parameters
from megatron_kd.study.rows import RunRow, frozen_losses
from megatron_kd.study.table import write_table

STUDENT_TOKENS, SEQ, DATA_SEED = 300 * 16 * 128, 128, 7
BUDGETS = {"123K": 122880, "369K": 368640, "1.11M": 1105920}


def _model(name: str):
    return load_config(f"models/cpu-{name}", purpose="model").model


def main(src: str, dst: str) -> None:
    lines = [line for line in Path(src).read_text().splitlines() if line.startswith("| cpu-tiny__")]
    models = {n: _model(n) for n in ("micro", "tiny", "small")}
    student = models["tiny"]
    per_tok = {n: training_flops_per_token(m, SEQ) for n, m in models.items()}
    rows = []
    for line in lines:
        c = [x.strip() for x in line.strip("|").split("|")]
        name, teacher, alpha = c[0], c[2], c[3]
        seed = int(re.search(r"seed(\d+)$", name).group(1))
        r = {"name": name, "student": "cpu-tiny", "student_params": count_parameters(student).total,
             "student_tokens": STUDENT_TOKENS, "seed": seed, "data_seed": DATA_SEED,
             "val": {"indomain": float(c[8]), "ood": float(c[9])},
             "student_flops": per_tok["tiny"] * STUDENT_TOKENS}
        if teacher == "(baseline)":
            r.update(teacher=None, alpha=0.0)
        else:
            model, budget = teacher.split("@")
            tokens = BUDGETS[budget]
            r.update(teacher=teacher, teacher_model=f"models/cpu-{model}",
                     teacher_params=count_parameters(models[model]).total, teacher_tokens=tokens,
                     temperature=float(c[4]), kind=c[5], top_k=64,
                     teacher_val={"indomain": float(c[6]), "ood": float(c[7])},
                     teacher_pretrain_flops=per_tok[model] * tokens,
                     teacher_pass_flops=per_tok[model] / 3 * STUDENT_TOKENS,  # its pass over this run's stream
                     teacher_pass_shared_by=12)  # one cache per teacher, read by its 12 points
            if "→" in alpha:
                r.update(alpha=None, alpha_schedule=alpha)
            else:
                r["alpha"] = float(alpha)
        rows.append(RunRow(**{**r, "val": frozen_losses(r["val"]), "teacher_val": frozen_losses(r.get("teacher_val"))}))
    write_table(Path(dst), rows, ["indomain", "ood"])
    print(f"{len(rows)} runs -> {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
