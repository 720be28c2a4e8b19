"""The training loop itself: take a step, then let the callbacks act on it.

Everything a run does around its steps (the KD schedule, profiling, the non-finite-step
budget, evaluation, logging, preemption, checkpointing) is a callback (training/callbacks.py),
so each can be replaced or tested alone with a fake step; `run_training` (training/loop.py)
assembles them for a real run. Callbacks run in list order at every hook; a callback that wants
the run to end calls `trainer.request_stop(status)`, and the loop stops after that step's
callbacks have run (a preemption checkpoint is written before the loop exits).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Why fit() returned: the run reached train.steps; a preemption signal stopped it (checkpoint
# written, exit 75 for requeue); it reached train.stop_at_step; or it had nothing left to do.
STATUSES = ("completed", "preempted", "stopped", "already_complete")


@dataclass(frozen=True)
class TrainResult:
    status: str  # one of STATUSES
    step: int  # the step the run is at now
    total: int  # train.steps
    steps_run: int  # steps taken by this fit()
    metrics: dict[str, float] = field(default_factory=dict)  # the last step's (val/... included)


@dataclass
class StepOutput:
    """One step, as the callbacks see it: they read `metrics` and add to `record` (the
    metrics.jsonl line) and `metrics` (what the run returns)."""

    step: int  # the step just taken (1-based: state.step after it)
    metrics: dict[str, float]
    record: dict
    seconds: float
    last: bool  # step == train.steps


class Callback:
    """Hooks around the loop; every one is optional."""

    def on_start(self, trainer: Trainer) -> None:
        pass

    def before_step(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        pass

    def on_end(self, trainer: Trainer, status: str) -> None:
        """After the last step (not after an exception): final saves and reports."""

    def close(self) -> None:
        """Always, last (files and loggers)."""


class Trainer:
    """`step_fn()` takes one optimizer step on `state` (advancing `state.step`) and returns its
    metrics: at least loss, lm loss, lr, grad_norm and skipped."""

    def __init__(self, state, step_fn: Callable[[], dict], *, total: int, stop: int | None = None,
                 tokens_per_step: int, callbacks: list[Callback] = ()):
        self.state, self.step_fn = state, step_fn
        self.total, self.stop = total, min(total, stop or total)
        self.tokens_per_step = tokens_per_step
        self.callbacks = list(callbacks)
        self.start_step = state.step
        self.started_at = time.perf_counter()
        self._stop_status: str | None = None

    def request_stop(self, status: str) -> None:
        """End the run after the current step's callbacks (status: see STATUSES)."""
        assert status in STATUSES, status
        self._stop_status = status

    def fit(self) -> TrainResult:
        state = self.state
        self.start_step = state.step
        metrics: dict[str, float] = {}
        try:
            if state.step >= self.stop:  # nothing to do: no callback runs but close()
                status = "already_complete" if state.step >= self.total else "stopped"
                return TrainResult(status, state.step, self.total, 0)
            for cb in self.callbacks:
                cb.on_start(self)
            self.started_at = time.perf_counter()
            while state.step < self.stop and self._stop_status is None:
                for cb in self.callbacks:
                    cb.before_step(self)
                t0 = time.perf_counter()
                metrics = dict(self.step_fn())
                dt = time.perf_counter() - t0
                out = StepOutput(state.step, metrics, self._record(state.step, metrics, dt), dt,
                                 state.step == self.total)
                for cb in self.callbacks:
                    cb.after_step(self, out)
            status = self._stop_status or ("completed" if state.step >= self.total else "stopped")
            for cb in self.callbacks:
                cb.on_end(self, status)
        finally:
            for cb in self.callbacks:
                cb.close()
        return TrainResult(status, state.step, self.total, state.step - self.start_step, metrics)

    def _record(self, step: int, m: dict, seconds: float) -> dict:
        return {"step": step, "tokens": step * self.tokens_per_step, "loss": m["loss"], "lm_loss": m["lm loss"],
                "lr": m["lr"], "grad_norm": m["grad_norm"], "tokens_per_s": self.tokens_per_step / seconds,
                "skipped": int(m["skipped"]), **{k: v for k, v in m.items() if k.startswith("moe_")}}
