"""Registered primary contrasts simulated at study v3's registered shape and measured noise
(tests/study/synthetic_v3.py): an effect planted on the registered contrast at the MDE `mkd power`
prints is found about 80 % of the time, and with no effect no claim says "holds" (nor "does not
hold" / "mixed") in more than 2.5 % of sweeps. The sweeps are read by the report's own paired fits
(per set, with its comparison families) and claims.read_claims."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from megatron_kd.study.analysis import comparison_family
from megatron_kd.study.claims import read_claims
from megatron_kd.study.claims_primary import claim1_registered, claim3_registered
from megatron_kd.study.paired import PairedFit
from megatron_kd.study.power import Noise
from megatron_kd.study.power_report import sweep_power
from megatron_kd.study.primary import parse_primary
from megatron_kd.study.sweep import load_sweep
from tests.study.synthetic_v3 import SIGMA, v3_rows
from tests.study.test_claims_primary import PRIMARY, WEAK, v3_with
from tests.study.test_power import row

CORR = 0.62  # v3_rows' per-run correlation of the sets' noise
DIFF_SD = math.sqrt(SIGMA["indomain"] ** 2 + SIGMA["ood_test"] ** 2
                    - 2 * CORR * SIGMA["indomain"] * SIGMA["ood_test"])  # a run's (OOD − in-domain) sd
REG = parse_primary(PRIMARY, "test")
SWEEPS = 200


def fixed_alpha(rows) -> list[dict]:
    """The baseline's and the fixed-α points' runs. Every p the claims' verdicts read comes from
    the fixed-α family's own fit, which is the same with or without the other families' runs
    (tests/study/test_noise_families.py); the controls' and frontier's runs would only add fits."""
    return [r for r in rows if comparison_family(r) in (None, "fixed α")]


def fits_of(rows, sets, diff_sets=()):
    """The report's fits (analysis.analyse's, without its tables): per set, and per OOD set of the
    per-run (OOD − in-domain) difference; the KD points as claims.read_claims reads them."""
    rows = fixed_alpha(rows)
    base = next(r for r in rows if not r.teacher and r.baseline_tokens is None).point_key
    fam = {r.point_key: comparison_family(r) for r in rows}

    def fit(value):
        cells: dict = {}
        for r in rows:
            cells.setdefault(r.point_key, {})[r.seed_key] = value(r)
        return PairedFit(cells, base, fam)

    fits = {s: fit(lambda r, s=s: r.val[s]) for s in sets}
    zfits = {s: fit(lambda r, s=s: r.val[s] - r.val["indomain"]) for s in diff_sets}
    kd, seen = [], set()
    for r in rows:
        if r.teacher and r.alpha is not None and r.point_key not in seen:
            seen.add(r.point_key)
            kd.append({"key": r.point_key, "teacher": r.teacher, "alpha": r.alpha,
                       "teacher_val": r.teacher_val, "teacher_model": r.teacher_model,
                       "teacher_tokens": r.teacher_tokens, "teacher_params": r.teacher_params})
    return base, fits, zfits, kd


@pytest.mark.slow  # ~5 s: 2 x 200 sweeps, one or two fits each
def test_an_effect_at_the_printed_mde_is_found_80_percent_of_the_time(tmp_path):
    """v3 short with PRIMARY: claim 1's mean over the two weak teachers at α 0.2/0.5 in-domain
    (priced with --weak-teachers 2), claim 3's mean (OOD − in-domain) gain on ood_test (priced at
    the per-run difference's sd, as `--from` a prior sweep measures it). Planted at the printed
    MDE, found (p below the printed level: Holm's first step, no Bonferroni) 80 % ± 7 % of 200."""
    [res] = sweep_power(load_sweep(v3_with(tmp_path, PRIMARY)), Noise(0.016, 0.023, diff=DIFF_SD), weak=2)
    r1, r3 = row(res, "claim 1 (registered)", "indomain"), row(res, "claim 3 (registered)", "ood_test − indomain")
    assert r1["alpha"] == r3["alpha"] == pytest.approx(0.05 / 4) and r1["df"] == r3["df"] == 15
    rng = np.random.default_rng(2027)
    found = Counter()
    for _ in range(SWEEPS):
        rows = v3_rows(rng, lambda t, a, s: r1["mde"] if t in WEAK and a in (0.2, 0.5) and s == "indomain" else 0.0)
        base, fits, _, kd = fits_of(rows, ["indomain"])
        c = claim1_registered(kd, fits, base, "indomain", ["indomain"], 0.95, (), REG[1])
        found[1] += c["p"] < r1["alpha"]
        rows = v3_rows(rng, lambda t, a, s: r3["mde"] if s == "ood_test" and t != "unigram" else 0.0)
        _, _, zfits, kd = fits_of(rows, [], ["ood_test"])
        c = claim3_registered(kd, zfits, ["ood_test"], 0.95, None, (), None, None, REG[3])
        found[3] += c["p"] < r3["alpha"]
    print(f"found at the MDE: claim 1 {found[1] / SWEEPS:.3f}, claim 3 {found[3] / SWEEPS:.3f}")
    assert abs(found[1] / SWEEPS - 0.8) <= 0.07 and abs(found[3] / SWEEPS - 0.8) <= 0.07, found


@pytest.mark.slow  # ~10 s: 200 sweeps, the four claims each
def test_no_effect_no_verdict_either_way_through_the_registered_contrasts():
    """200 v3 sweeps with no effect, claims 1-3 registered (PRIMARY), Holm over the four: false
    "holds" (as smoothing too) and false "does not hold" / "mixed" at most 2.5 % per claim."""
    rng = np.random.default_rng(2028)
    holds, against = Counter(), Counter()
    for _ in range(SWEEPS):
        base, fits, zfits, kd = fits_of(v3_rows(rng), ["indomain", "ood_dev", "ood_test"], ["ood_test"])
        for c in read_claims(kd, fits, zfits, base, "indomain", ["ood_test"], n_boot=0,
                             dev_of={"ood_test": "ood_dev"}, primary=PRIMARY):
            holds[c["claim"]] += c["verdict"].startswith("holds")
            against[c["claim"]] += c["verdict"] in ("does not hold", "mixed")
    print(f"false holds {dict(holds)}, false against {dict(against)} of {SWEEPS}")
    assert all(holds[k] / SWEEPS <= 0.025 for k in (1, 2, 3, 4)), holds
    assert all(against[k] / SWEEPS <= 0.025 for k in (1, 2, 3, 4)), against
