"""The gradient norm and clipping of one optimizer step, for a plain or a chained optimizer.

An MoE model gets megatron-core's ChainedOptimizer (dense and expert parameters, whose gradient
statistics reduce over different groups: the expert-parallel ranks hold different experts).
Its clip_grad_norm asks for one shared group and refuses; its own step() clips each part by
the global norm, which is what this does for the step the loop splits (see loop.train_step).
"""

from __future__ import annotations


def grad_norm_and_clip(optimizer, clip_grad: float):
    """The global gradient norm (before clipping), every gradient scaled to at most
    `clip_grad` in that norm when `clip_grad` > 0."""
    from megatron.core.optimizer import ChainedOptimizer
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    chained = isinstance(optimizer, ChainedOptimizer) and len(optimizer.chained_optimizers) > 1
    if not chained or optimizer.grads_states_parallel_group_is_shared():
        return optimizer.clip_grad_norm(clip_grad) if clip_grad > 0 else optimizer.get_grad_norm()
    grad_norm = optimizer.get_grad_norm()
    if clip_grad > 0 and grad_norm is not None:
        for part in optimizer.chained_optimizers:
            params = part.get_parameters()
            if params:
                clip_grad_by_total_norm_fp32(params, max_norm=clip_grad, total_norm=grad_norm)
    return grad_norm
