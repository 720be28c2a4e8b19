"""Fault injection for the reliability tests: real faults (NaN gradients, SIGKILL mid-save,
SIGKILL after a cache shard) at chosen points of a real run.

The tests ask for them through the environment of the job they launch (the faults must reach
ranks started by `mkd train --nproc N`); this module reads it once, when a job builds its
hooks, and nothing else in the package looks at it. A normal run gets `Faults()`: no hook or
callback is installed and the hot path has nothing to check.

    MKD_INJECT_NAN_STEPS=3,4               those steps' gradients are NaN (the non-finite guard)
    MKD_INJECT_KILL_IN_SAVE=STEP:POINT     SIGKILL at POINT (after_shards | before_rename) of
                                           the save made at STEP (atomic saves)
    MKD_INJECT_KILL_CACHE_SHARD=J          SIGKILL the cache writer once shard J is in place
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from megatron_kd.training.trainer import Callback


@dataclass(frozen=True)
class Faults:
    nan_grad_steps: frozenset[int] = frozenset()
    kill_in_save: tuple[int, str] | None = None
    kill_after_cache_shard: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Faults:
        nan = frozenset(int(x) for x in env.get("MKD_INJECT_NAN_STEPS", "").split(",") if x.strip())
        save = env.get("MKD_INJECT_KILL_IN_SAVE", "")
        step, _, point = save.partition(":")
        shard = env.get("MKD_INJECT_KILL_CACHE_SHARD", "")
        return cls(nan, (int(step), point) if save else None, int(shard) if shard else None)

    def callbacks(self) -> list[Callback]:
        """The trainer's callbacks that inject these faults (none without NaN faults)."""
        return [NaNGradients(self.nan_grad_steps)] if self.nan_grad_steps else []

    def save_hook(self):
        """A Checkpointer save hook (point, step) -> None, or None without a save fault."""
        if self.kill_in_save is None:
            return None

        def kill(point: str, step: int) -> None:
            if (step, point) == self.kill_in_save:
                os.kill(os.getpid(), signal.SIGKILL)

        return kill

    def cache_shard_hook(self):
        """A hook the cache writer calls with each shard index once it is in place, or None."""
        if self.kill_after_cache_shard is None:
            return None

        def kill(j: int) -> None:
            if j == self.kill_after_cache_shard:
                os.kill(os.getpid(), signal.SIGKILL)

        return kill


class NaNGradients(Callback):
    """At the chosen steps every gradient is NaN once backward is done, before the optimizer
    step sees it (the non-finite guard's path)."""

    def __init__(self, steps: frozenset[int]):
        self.steps = steps

    def pre_optim_step(self, trainer, step: int) -> None:
        if step in self.steps:
            for chunk in trainer.state.model:
                for p in chunk.parameters():
                    if getattr(p, "main_grad", None) is not None:
                        p.main_grad.fill_(math.nan)
