"""Directional verdicts ("does not hold", "mixed") carry the same multiplicity control as "holds"
(claims.read_claims): each claim's p against, Bonferroni over its candidate verdicts, then Holm
over the claims; a p that would pass alone does not pass after Holm."""

from __future__ import annotations

import pytest

from megatron_kd.study.claims import _against, _verdict
from megatron_kd.study.paired import holm


def _read(claims: dict, level: float = 0.95) -> dict:
    """read_claims' last step on hand-made claims {k: {p, against}}."""
    adjusted = holm({k: c["p"] for k, c in claims.items()})
    against = holm({k: _against(c)[1] for k, c in claims.items()})
    out = {}
    for k, c in claims.items():
        c = {**c, "p_holm": adjusted[k], "p_against_holm": against[k]}
        out[k] = _verdict(k, c, level)
    return out


def test_does_not_hold_needs_its_holm_adjusted_p():
    # claim 4's p against is 0.02: below 0.05 alone, above Holm's 0.05/3 at the first step
    claims = {1: {"p": 0.5, "against": [("does not hold", 0.3)]},
              2: {"p": 0.6, "against": [("does not hold", 0.4)]},
              4: {"p": 0.9, "against": [("does not hold", 0.02)]}}
    assert _read(claims)[4] == "inconclusive"
    claims[4]["against"] = [("does not hold", 0.01)]
    assert _read(claims)[4] == "does not hold"


def test_candidates_are_bonferroni_corrected_and_both_ways_is_mixed():
    c = {"p": 0.5, "against": [("mixed", 0.02), ("does not hold", 0.2)]}
    assert _against(c) == ("mixed", pytest.approx(0.04))
    assert _against({"against": [("does not hold", None)]}) == (None, None)
    claims = {2: {"p": 0.001, "against": [("does not hold", 0.002)]},
              3: {"p": 0.9, "against": [("mixed", 0.004), ("does not hold", 0.8)]}}
    verdicts = _read(claims)
    assert verdicts == {2: "mixed", 3: "mixed"}  # 2: both ways significant; 3: points both ways
    claims[2]["against"] = [("does not hold", 0.2)]
    assert _read(claims)[2] == "holds"


def test_a_claim_left_untested_by_the_data_still_counts_in_holm():
    """read_claims: claim 2 with no gain to follow enters Holm as p = 1, so claim 3's 0.02 is not
    read at 0.05/2 when the design registered more claims than the data let through."""
    import numpy as np

    from megatron_kd.study import claims as claims_mod

    made = {1: {"verdict": None, "null": "", "p": 0.5, "against": []},
            2: {"verdict": "not tested", "null": "", "p": None, "untested_by_data": True},
            3: {"verdict": None, "null": "", "p": 0.02, "against": []},
            4: {"verdict": "not tested", "null": "", "p": None}}  # untested by design: not counted

    def fake(name):
        return lambda *a, **k: dict(made[name])
    mp = pytest.MonkeyPatch()
    for k in made:
        mp.setattr(claims_mod, f"claim{k}", fake(k))
    try:
        out = {c["claim"]: c for c in claims_mod.read_claims([], {"i": None}, {}, None, "i", [],
                                                              n_boot=0, seed=0)}
    finally:
        mp.undo()
    assert out[3]["p_holm"] == pytest.approx(0.06) and out[3]["verdict"] == "inconclusive"
    assert out[2]["p_holm"] is None and out[2]["verdict"] == "not tested"
    assert np.isclose(out[1]["p_holm"], 1.0)
