"""An MoE run's checkpoint resumes at any layout: stopped after 2 of 4 steps at EP=2 (two
experts per rank, the distributed optimizer sharding their Adam state over the expert
data-parallel ranks), it resumes at EP=1, at TP=2 with the experts split by expert TP, at
TP=2 x EP=2 with expert TP 1, and at PP=2, each to the losses of the run that never stopped
(one process group of two gloo ranks; tests/workers/moe_reshard.py)."""

from __future__ import annotations

import pytest

from tests.distributed import run_distributed

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

OPT = "parallel.distributed_optimizer=true"
SP = "parallel.sequence_parallel=true"  # megatron-core trains MoE layers at TP > 1 only with it
LAYOUTS = {  # name: overrides, (TP, PP, EP, expert TP) it ran at
    "ep1": (["parallel.ep=1", OPT], [1, 1, 1, 1]),
    "tp2_etp2": (["parallel.tp=2", SP, OPT], [2, 1, 1, 2]),
    "tp2_ep2_etp1": (["parallel.tp=2", SP, "parallel.ep=2", "parallel.etp=1", OPT], [2, 1, 2, 1]),
    "pp2": (["parallel.pp=2", OPT], [1, 2, 1, 1]),
}
KEYS = ("loss", "grad_norm", "moe_load_balancing_loss", "moe_z_loss")


def test_an_moe_checkpoint_saved_at_ep2_resumes_at_tp_pp_ep_and_expert_tp(tmp_path):
    out = run_distributed("tests.workers.moe_reshard:resume_at_layouts", 2, tmp_path,
                          saved_at=["parallel.ep=2", OPT], layouts={k: v[0] for k, v in LAYOUTS.items()})[0]
    reference = out["reference"]
    assert [r["step"] for r in reference] == [1, 2, 3, 4]
    assert abs(reference[2]["loss"] - reference[0]["loss"]) > 1e-2  # it trained: step 3 is not a fresh start
    assert _close(out["saved"], reference[:2])  # EP=2 trains as EP=1 does
    for name, (_, sizes) in LAYOUTS.items():
        assert out["sizes"][name] == sizes, name
        rows = out[name]
        assert [r["step"] for r in rows] == [1, 2, 3, 4], name  # steps 3 and 4 appended by the resumed run
        assert _close(rows[2:], reference[2:]), (name, rows[2:], reference[2:])


def _close(rows: list[dict], reference: list[dict]) -> bool:
    return all(abs(r[k] - ref[k]) < 1e-5 for r, ref in zip(rows, reference, strict=True) for k in KEYS)
