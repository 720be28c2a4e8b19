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
