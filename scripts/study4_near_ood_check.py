"""Study v4's registered check of its near-OOD set, run after the teachers and the baselines and
before any KD run (docs/STUDY.md, "Study v4: the design"), and with --table the final validation
losses of every teacher and baseline run it read, one row each:

    python scripts/study4_near_ood_check.py [--table docs/study/v4/teachers_and_baselines.csv]

(a) the student's baseline still improves on wisdom_dev at its length: its 300-step loss is below
its 150-step loss at every seed; (b) the strongest teacher (lowest in-domain loss) beats the
300-step baseline's seed mean on wisdom_dev. Prints both, and exits 1 if either fails (the study
then goes on only with MKD_STUDY_ANYWAY=1, and the page reports the failed check beside claim 3).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

SWEEP = Path("runs/sweeps/cpu-study-v4/runs")
TEACHERS = Path("runs/study4/teachers")
NEAR = "val/wisdom_dev"


def last_validation(run_dir: Path) -> dict:
    """The run's last logged validation losses ({"val/<set>": loss})."""
    vals: dict = {}
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        sys.exit(f"{path} is missing: run the teachers and the baselines first (scripts/study.sh does)")
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if NEAR in record:
            vals = {k: v for k, v in record.items() if k.startswith("val/")}
    if not vals:
        sys.exit(f"{path} has no {NEAR} loss: the run was not validated on the near-OOD set")
    return vals


def write_table(path: Path) -> None:
    """Every teacher's and baseline's last validation losses, one row per run."""
    runs = sorted(p for p in TEACHERS.iterdir() if p.is_dir()) + sorted(SWEEP.glob("cpu-tiny__baseline*"))
    rows = [{"run": p.name, **last_validation(p)} for p in runs]
    sets = sorted({k for r in rows for k in r if k.startswith("val/")})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["run", *sets])
        writer.writeheader()
        writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    print(f"wrote {path}: {len(rows)} runs")


def main() -> int:
    parser = argparse.ArgumentParser(description="study v4's near-OOD check")
    parser.add_argument("--table", type=Path, help="also write the teachers' and baselines' losses here (CSV)")
    args = parser.parse_args()
    if args.table:
        write_table(args.table)
    seeds = sorted(p.name.rsplit("__seed", 1)[1] for p in SWEEP.glob("cpu-tiny__baseline__seed*"))
    if not seeds:
        sys.exit(f"no baselines under {SWEEP}: run them first")
    short = {s: last_validation(SWEEP / f"cpu-tiny__baseline-150steps__seed{s}")[NEAR] for s in seeds}
    full = {s: last_validation(SWEEP / f"cpu-tiny__baseline__seed{s}")[NEAR] for s in seeds}
    improves = all(full[s] < short[s] for s in seeds)
    print("(a) baseline on wisdom_dev, 150 -> 300 steps: "
          + ", ".join(f"seed {s} {short[s]:.4f} -> {full[s]:.4f}" for s in seeds)
          + (": still improving" if improves else ": NOT improving at every seed"))
    teachers = {p.name: last_validation(p) for p in sorted(TEACHERS.iterdir()) if p.is_dir()}
    best = min(teachers, key=lambda t: teachers[t]["val/indomain"])
    bar = sum(full.values()) / len(full)
    beats = teachers[best][NEAR] < bar
    print(f"(b) strongest teacher {best} (in-domain {teachers[best]['val/indomain']:.4f}) on wisdom_dev: "
          f"{teachers[best][NEAR]:.4f} against the baseline's {bar:.4f}"
          + (": beats it" if beats else ": does NOT beat it"))
    return 0 if improves and beats else 1


if __name__ == "__main__":
    sys.exit(main())
