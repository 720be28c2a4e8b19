"""`mkd power SWEEP.yaml`: each registered test's minimum detectable effect before the sweep runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from megatron_kd.errors import ConfigError


def add_power_parser(sub) -> None:
    p = sub.add_parser("power", help="a sweep's power before it runs: each test's minimum detectable effect",
                       description="For the sweep's design (its points, seeds, baselines) and a noise level, print "
                                   "each test the report will apply (the per-point gains, the paper's four claims) "
                                   "with its minimum detectable effect at 80 %% power after the report's corrections "
                                   "(Holm's first step over the claims, Bonferroni within a claim; a claim registered "
                                   "in the sweep's `primary:` block is priced as its one contrast, no Bonferroni), "
                                   "the smallest p "
                                   "its permutation test can reach, and warnings for designs that cannot answer.")
    p.add_argument("sweep", help="a sweep YAML (recipes/sweeps/...)")
    p.add_argument("--sigma", type=float, default=None,
                   help="the residual sd of one run's in-domain loss, in nats (e.g. 0.016)")
    p.add_argument("--sigma-ood", type=float, default=None, help="the same on the OOD sets (default: --sigma)")
    p.add_argument("--from", dest="source", default=None, metavar="SWEEP_DIR|TABLE.csv",
                   help="estimate the noise from a prior sweep's runs or results table instead")
    p.add_argument("--level", type=float, default=0.95, help="the report's confidence level (default 0.95)")
    p.add_argument("--weak-teachers", type=int, default=None, metavar="K",
                   help="teachers assumed weak for claim 1 (weakness is known only once the teachers are scored): "
                        "unregistered, the size of its Bonferroni family (default 1: the optimistic MDE); with "
                        "`primary: {claim 1: {teachers: weak, ...}}` in the sweep, the mean is priced over the first "
                        "K real teachers in the sweep's teacher order, list the weakest first (default: all of them; "
                        "in a balanced design only K matters)")
    p.add_argument("--equivalence", type=float, default=0.01, help="claim 2's margin, nats (default 0.01)")
    p.add_argument("--json-out", default=None, metavar="FILE", help="write the numbers as JSON")
    p.set_defaults(func=cmd_power)


def _noise(args):
    from megatron_kd.study.power import Noise
    from megatron_kd.study.power_report import noise_from

    if (args.sigma is None) == (args.source is None):
        raise ConfigError("give the noise as --sigma S (and optionally --sigma-ood S2) or --from SWEEP_DIR|TABLE.csv "
                          "(one of them), e.g. mkd power recipes/sweeps/cpu-mini.yaml --sigma 0.016")
    if args.source is not None:
        if args.sigma_ood is not None:
            raise ConfigError("--sigma-ood goes with --sigma, not --from (the table gives its own)")
        return noise_from(args.source)
    return Noise(args.sigma, args.sigma_ood)


def _check(args) -> None:
    if not (math.isfinite(args.level) and 0.5 <= args.level < 1):
        raise ConfigError(f"--level must be in [0.5, 1), got {args.level}")
    if args.weak_teachers is not None and not 0 <= args.weak_teachers <= 1000:
        raise ConfigError(f"--weak-teachers must be in [0, 1000], got {args.weak_teachers}")
    if not (math.isfinite(args.equivalence) and args.equivalence > 0):
        raise ConfigError(f"--equivalence must be a positive number of nats, got {args.equivalence}")


def cmd_power(args) -> int:
    from megatron_kd.files import write_text_atomic
    from megatron_kd.study.power_report import format_power, sweep_power
    from megatron_kd.study.sweep_grid import load_sweep

    _check(args)
    noise = _noise(args)
    spec = load_sweep(args.sweep)
    if args.json_out and Path(args.json_out).resolve() == Path(spec["_path"]).resolve():
        raise ConfigError(f"--json-out {args.json_out} is the sweep file itself; name another file")
    results = sweep_power(spec, noise, args.level, args.weak_teachers, args.equivalence)
    print("\n".join(format_power(results, noise)))
    if args.json_out:
        out = {"sweep": spec["name"], "noise": {"in_domain": noise.in_domain, "ood": noise.ood, "diff": noise.diff,
                                                "source": noise.source},
               "power": 0.8, "level": args.level, "holm": "first step: (1 - level) / m for every claim",
               "students": results}
        write_text_atomic(Path(args.json_out), json.dumps(out, indent=1) + "\n")
        print(f"\nwritten: {args.json_out}")
    return 0
