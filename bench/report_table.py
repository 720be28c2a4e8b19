"""Wall time of `mkd report --table` (a fresh process, import included) on synthetic results
tables: tall ones (10^3, 10^4, 10^5 runs: one student, many teachers x 3 α x 3 seeds, 2 sets)
and a wide one (63 runs x 152 validation sets, the figures' layout case). The targets (issue 41):
10^5 runs in <= 60 s on the 2-core CPU box, the wide table in well under 240 s.

    .venv/bin/python bench/report_table.py [--rows 1000 10000 100000] [--wide] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, machine, markdown_table, write_json  # noqa: E402


def tall_rows(n_rows: int, seed: int = 0, alphas=(0.2, 0.5, 1.0)) -> tuple[list[dict], list[str]]:
    """About `n_rows` runs: 3 baselines and teachers x α x 3 seeds (the study's shape)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_teachers = max(1, (n_rows - 3) // (3 * len(alphas)))
    seed_effect = {s: rng.normal(0, 0.013, 2) for s in (1, 2, 3)}
    sets = ["indomain", "ood"]

    def run(name, s, gain, **kw):
        e = seed_effect[s] + rng.normal(0, 0.009, 2)
        return {"name": name, "student": "s", "student_params": 0.36e6, "student_tokens": 614400,
                "tokens": 614400, "seed": s, "data_seed": 7,
                "val": {"indomain": 4.348 - gain + e[0], "ood": 6.071 - gain + e[1]}, **kw}

    rows = [run(f"base-{s}", s, 0.0, teacher=None, alpha=0.0) for s in (1, 2, 3)]
    for t in range(n_teachers):
        own = 3.7 + 2.3 * rng.random()
        params, tokens = float(rng.choice([0.14e6, 0.36e6, 1.3e6])), int(rng.choice([122880, 368640, 1105920]))
        for a in alphas:
            for s in (1, 2, 3):
                rows.append(run(f"t{t}-a{a}-{s}", s, 0.01 * a, teacher=f"m{t % 7}@{t}", alpha=a,
                                temperature=1.0, kind="forward_kl", teacher_val={"indomain": own, "ood": own + 1.5},
                                teacher_tokens=tokens, teacher_params=params, teacher_model=f"m{t % 7}"))
    return rows, sets


def wide_rows(n_sets: int = 152, seed: int = 0) -> tuple[list[dict], list[str]]:
    """63 runs (3 baselines, 20 teachers x 1 α x 3 seeds) scored on `n_sets` validation sets."""
    rows, _ = tall_rows(63, seed, alphas=(0.5,))
    sets = ["indomain"] + [f"ood{i:03d}" for i in range(n_sets - 1)]
    for r in rows:
        r["val"] = {s: r["val"]["indomain"] + 0.01 * i for i, s in enumerate(sets)}
        if r.get("teacher_val"):
            r["teacher_val"] = {s: r["teacher_val"]["indomain"] + 0.01 * i for i, s in enumerate(sets)}
    return rows, sets


def time_report(rows: list[dict], sets: list[str], work: Path, timeout: float) -> dict:
    from megatron_kd.study.table import write_table

    table = work / f"t{len(rows)}x{len(sets)}.csv"
    write_table(table, rows, sets)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "megatron_kd.cli.main", "report", "--table", str(table),
           "--out", str(work / f"{table.stem}_report")]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    return {"rows": len(rows), "sets": len(sets), "seconds": round(time.perf_counter() - t0, 1), "rc": rc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="*", default=[1000, 10000, 100000])
    ap.add_argument("--wide", action="store_true", help="also the 63 runs x 152 sets table")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [tall_rows(n) for n in args.rows] + ([wide_rows()] if args.wide else [])
        for rows, sets in cases:
            results.append(time_report(rows, sets, Path(tmp), args.timeout))
            print(results[-1], flush=True)
    print(f"\n{machine()}\n")
    print(markdown_table(results, [("rows", "runs"), ("sets", "validation sets"), ("seconds", "mkd report s"),
                                   ("rc", "exit")]))
    write_json(args.json_out, {"machine": machine(), "results": results})


if __name__ == "__main__":
    main()
