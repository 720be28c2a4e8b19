"""kd.auto under data and tensor parallelism: every rank uses the same α on every micro-batch,
the α a single process takes on the same global micro-batches, for every kind of teacher signal
(tests/workers/auto_alpha_ranks.py: 2 gloo ranks, as DP=2 and as TP=2)."""

from __future__ import annotations

import pytest

from tests.distributed import run_distributed
from tests.workers.auto_alpha_ranks import MICRO_BATCHES, ROUTES


@pytest.mark.slow
@pytest.mark.multiproc
def test_every_rank_takes_the_one_process_alpha_at_dp2_and_tp2(tmp_path):
    per_rank = run_distributed("tests.workers.auto_alpha_ranks:main", 2, tmp_path, timeout=120)
    for route in ROUTES:
        runs = [r[route] for r in per_rank]
        alone = runs[0]["one_process"]
        assert len(alone["levels"]) == MICRO_BATCHES
        assert len(set(alone["levels"][1:])) == MICRO_BATCHES - 1, (route, alone)  # the trend moves
        assert 0.0 < min(alone["levels"]) and max(alone["levels"]) <= 0.8, (route, alone)
        for layout in ("dp2", "tp2"):  # identical on every rank; the one-process run's up to rounding
            assert runs[0][layout] == runs[1][layout], (route, layout)
            assert runs[0][layout]["levels"] == pytest.approx(alone["levels"], rel=1e-6, abs=1e-9), (route, layout)
            assert runs[0][layout]["mean"] == pytest.approx(alone["mean"], rel=1e-6), (route, layout)
        # each data-parallel rank on its own samples alone would have drifted apart
        assert runs[0]["dp2_unreduced"]["levels"] != runs[1]["dp2_unreduced"]["levels"], route
