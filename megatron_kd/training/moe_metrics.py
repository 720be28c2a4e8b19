"""The MoE router's losses of one training step, for the step line and metrics.jsonl.

megatron-core's router adds its load-balancing and z losses to the backward pass itself (scaled
by their coefficients) and records each MoE layer's unscaled value in its metrics tracker; this
reads the step's values from there, averaged over micro-batches and MoE layers and reduced over
the ranks (every rank calls it: the tracker's reduction is collective), then clears it. A frozen
teacher's router, in eval mode, records nothing.
"""

from __future__ import annotations

from megatron_kd.config.schema import RunConfig

TRACKED = (("load_balancing_loss", "aux_loss_coeff"), ("z_loss", "z_loss_coeff"))


def moe_step_metrics(cfg: RunConfig, num_microbatches: int, step: int) -> dict[str, float]:
    """{"moe_load_balancing_loss": ..., "moe_z_loss": ...} for the losses the student's router
    adds (empty for a dense student)."""
    moe = cfg.model.moe
    names = [name for name, coeff in TRACKED if moe.num_experts and getattr(moe, coeff)]
    if not names:
        return {}
    from megatron.core.transformer.moe.moe_logging import get_moe_metrics_tracker

    totals: dict = {}
    # force_initialize: a pipeline stage without MoE layers still joins the reduction
    get_moe_metrics_tracker().report(loss_scale=1.0 / num_microbatches, iteration=step, num_layers=cfg.model.num_layers,
                                     moe_layer_freq=moe.layer_freq, force_initialize=True, track_names=names,
                                     total_loss_dict=totals)
    return {f"moe_{name}": float(value) for name, value in totals.items()}
