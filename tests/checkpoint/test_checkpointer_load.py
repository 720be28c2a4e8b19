"""The Checkpointer's load on a real checkpoint of the tiny model (one gloo rank): the resume
point comes back whole (weights, Adam's moments, the data position, the next step's loss) and is
returned, not set on the state; checkpoint.load brings the weights only."""

from __future__ import annotations

import pytest

from tests.distributed import run_distributed

pytestmark = pytest.mark.slow


def test_a_saved_run_loads_whole_and_checkpoint_load_weights_only(tmp_path):
    (out,) = run_distributed("tests.workers.checkpointer_load:save_then_load", 1, tmp_path)
    assert out["resume_from"] == out["saved"] and out["resumed"]
    assert out["loaded"] == [2, 8] and out["state_before_start"] == [0, 0]  # tiny-mock: global batch 4
    assert out["weights"] and out["moments"]
    trained, resumed = out["next_loss"]
    assert abs(trained - resumed) < 1e-6, out["next_loss"]
    assert out["initial"] == {"resumed": False, "step": 0, "moments": 0, "weights": True}
