"""`mkd power`'s inputs and outputs: the noise level from `--sigma` or from a prior sweep's runs
(the paired fit's residual sd per set, as the report computes it), and the console table.
The numbers come from power.py."""

from __future__ import annotations

import math
from pathlib import Path

from megatron_kd.errors import ConfigError
from megatron_kd.study.analysis import analyse, split_sets, test_sets
from megatron_kd.study.power import EQUIVALENCE, FIXED_ALPHA, LEVEL, Noise, designs_of, sets_of, student_power
from megatron_kd.study.primary import check_names, parse_auto, parse_primary
from megatron_kd.study.sweep_dir import collect
from megatron_kd.study.sweep_grid import expand
from megatron_kd.study.table import read_table


def noise_from(source: str | Path) -> Noise:
    """The residual sd per set of a prior sweep (its `out` directory) or results table, in the
    family the claims are read in (fixed α; claims_noise), pooled over its students by degrees of
    freedom: in-domain, the largest OOD set's, and the largest
    (OOD - in-domain) fit's."""

    path = Path(source)
    if path.is_dir():
        rows, _, sets = collect(path)
    elif path.is_file():
        rows, sets = read_table(path)
    else:
        raise ConfigError(f"--from {source}: no such sweep directory or results table")
    if not rows:
        raise ConfigError(f"--from {source}: no finished runs to estimate the noise from")
    id_set, _ = split_sets(sets)
    students = analyse(rows, sets, n_boot=0)["students"].values()
    pooled: dict = {}
    for st in students:
        fits = [(s, f) for s, f in st["fits"].items()] + [(f"{s} − {id_set}", f) for s, f in st["zfits"].items()]
        for s, f in fits:
            sigma, df_f = claims_noise(f)
            if sigma is not None and df_f > 0:
                ss, df = pooled.get(s, (0.0, 0))
                pooled[s] = (ss + df_f * sigma ** 2, df + df_f)
    sd = {s: math.sqrt(ss / df) for s, (ss, df) in pooled.items()}
    if id_set not in sd:
        raise ConfigError(f"--from {source}: no residual degrees of freedom to estimate the noise from "
                          "(one seed per KD point); give --sigma")
    ood = [v for s, v in sd.items() if s != id_set and "−" not in s]
    diff = [v for s, v in sd.items() if "−" in s]
    dfs = ", ".join(f"{s} {v:.4f} ({pooled[s][1]} df)" for s, v in sd.items())
    return Noise(sd[id_set], max(ood) if ood else None, max(diff) if diff else None,
                 source=f"residual sd of {path.name}: {dfs}")


def claims_noise(fit) -> tuple[float | None, int]:
    """(sd, df) of the family the claims are read in (fixed α) where the fit has families of its
    own, else the fit's pooled residual sd."""
    fam = getattr(fit, "families", None)
    if fam is not None and FIXED_ALPHA in fam.names:
        return fam.sigma_df(FIXED_ALPHA)
    return fit.sigma, fit.df


def sweep_power(spec: dict, noise: Noise, level: float = LEVEL, weak: int | None = None,
                equivalence: float = EQUIVALENCE) -> list[dict]:
    """student_power for every student of the sweep's expanded design, each registered claim of
    its `primary:` block (its names checked against the design) priced as its one test."""

    points = expand(spec)
    sets = sets_of(spec, points)
    designs = designs_of(points).values()
    reg = registered_in(spec, designs, sets)
    auto = parse_auto(spec.get("primary"), f"sweep {spec.get('_path', spec.get('name'))}")
    return [student_power(d, noise, sets, level, weak, equivalence, reg, auto) for d in designs]


def registered_in(spec: dict, designs, sets: list) -> dict:
    """{claim: its registered entry} of the sweep's `primary:` block, every teacher, α and set it
    names checked against the expanded design (one line on an unknown one); {} without one."""
    if not spec.get("primary"):
        return {}
    where = f"sweep {spec.get('_path', spec.get('name'))}"
    reg = parse_primary(spec["primary"], where)
    id_set, ood = split_sets(sets)
    ood_sets, dev_of = test_sets(ood)
    kd = [p for d in designs for p in d.kd]
    check_names(reg, where, {p["teacher"] for p in kd}, {p["teacher"] for p in kd if p["control"]},
                alphas={p["alpha"] for p in kd if not p["control"]}, verdict_sets=[id_set, *ood_sets],
                ood_sets=ood_sets, dev_sets=dev_of.values())
    return reg


def _num(v, fmt: str = ".3f") -> str:
    return "—" if v is None else format(v, fmt)


def format_power(results: list[dict], noise: Noise) -> list[str]:
    """The console table: one line per test, then the warnings."""
    lines = [f"noise: σ in-domain {noise.in_domain:.4f}, OOD {noise.ood:.4f}, (OOD − in-domain) "
             f"{noise.diff:.4f} ({noise.source})",
             f"minimum detectable effect (nats) at {100 * 0.8:.0f} % power, one-sided; Holm's first step α/m "
             "over the claims (the worst case), Bonferroni over a claim's comparisons"
             + ("; a registered primary contrast is one test" if any("(registered)" in row["test"] for r in results
                                                                    for row in r["rows"]) else "")]
    for r in results:
        lines.append(f"{r['student']}: {r['df']} residual degrees of freedom; Holm over m = {r['holm_m']} claims")
        w = max([38] + [len(row["test"]) for row in r["rows"]])  # a registered test's name is longer
        lines.append(f"  {'test':<{w}} {'set':<22} {'comps':>5} {'α each':>8} {'SE':>7} {'df':>4} {'MDE':>7}")
        for row in r["rows"]:
            mde = _num(row["mde"]) if "smallest_p" not in row else f"p≥{row['smallest_p']:.3g}"
            lines.append(f"  {row['test']:<{w}} {row['set']:<22} {row['comparisons']:>5} {row['alpha']:>8.2g} "
                         f"{_num(row['se'], '.4f'):>7} {_num(row['df'], 'd'):>4} {mde:>7}"
                         + (f"  ({row['note']})" if row.get("note") else ""))
        lines += [f"  warning: {w}" for w in r["warnings"]]
    return lines


def power_summary(spec: dict, sigma: Noise | float) -> list[str]:
    """The lines `mkd power` prints, for a sweep spec (sweep.load_sweep) and a noise level: what
    `mkd sweep` can print before launching."""
    noise = sigma if isinstance(sigma, Noise) else Noise(float(sigma))
    return format_power(sweep_power(spec, noise), noise)


def power_refusal(results: list[dict], required: dict) -> str | None:
    """One line when a test the sweep requires power for cannot reach it, else None (what
    `mkd sweep` can refuse with). `required`: {test: the effect in nats it must detect at 80 %
    power}, a test named as the table names it from its start ("claim 1", "claim 3",
    "per-point gain"); for "claim 4" any value: its smallest p must be below its Holm level."""
    misses = []
    for r in results:
        for test, effect in required.items():
            rows = [row for row in r["rows"] if row["test"].startswith(test)]
            if not rows:
                misses.append(f"{r['student']}: {test} is not tested by this design")
            for row in rows:
                p, a = row.get("smallest_p"), row["alpha"]
                if p is not None:
                    if p >= a:
                        misses.append(f"{r['student']}: {test}'s smallest p {p:.3g} ≥ {a:.3g}")
                elif row["mde"] is None or row["mde"] > float(effect):
                    misses.append(f"{r['student']}: {row['test']} on {row['set']} detects {_num(row['mde'])} nats, "
                                  f"not {float(effect):g}")
    if not misses:
        return None
    return (f"the sweep cannot reach the power it requires ({'; '.join(misses[:3])}"
            + (f"; {len(misses) - 3} more" if len(misses) > 3 else "") + "): add seeds or points, or --no-power-check")
