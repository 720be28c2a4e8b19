"""The training loop itself: take a step, then let the callbacks act on it.

Everything a run does around its steps (profiling, the non-finite-step budget, evaluation,
logging, preemption, checkpointing, injected faults) is a callback (training/callbacks.py), so
each can be replaced or tested alone with a fake step; `run_training` (training/loop.py)
assembles them for a real run. The callbacks do not hold each other: they run in descending
`priority` at every hook, write what they measure into the step's record through the trainer
(`record`), read it from the step's output, and end the run through it (`cancel`); the loop
stops after that step's callbacks have run (a preemption checkpoint is written before it exits).
A run that raises tells every callback (`on_error`: W&B marks the run failed) before the error
goes on.

A step is two calls, with a hook between them: `forward_backward(settings)` (the gradients;
`settings` are the step's scheduled inputs, a KD run's α and T), the callbacks'
`pre_optim_step`, then `optim_step()` (the update, which advances the state's step).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

log = logging.getLogger(__name__)

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
    """One step, as the callbacks see it: `metrics` (what the step measured; the run returns the
    last step's) and `record` (the metrics.jsonl line). Callbacks add to both only through
    `Trainer.record`, and read them here."""

    step: int  # the step just taken (1-based: state.step after it)
    metrics: dict[str, float]
    record: dict
    seconds: float
    last: bool  # step == train.steps
    settings: Any = None  # what the step was given (a KD run's α and T), from the trainer's schedule


class Callback:
    """Hooks around the loop; every one is optional. Higher `priority` runs first at every hook
    (equal ones in the order given): a callback that reads what another records, or acts on its
    cancel, has the lower priority."""

    priority: ClassVar[int] = 0

    def on_start(self, trainer: Trainer) -> None:
        pass

    def before_step(self, trainer: Trainer) -> None:
        pass

    def pre_optim_step(self, trainer: Trainer, step: int) -> None:
        """Step `step`'s gradients are computed, its optimizer step not yet taken."""

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        pass

    def on_end(self, trainer: Trainer, status: str) -> None:
        """After the last step (not after an exception): final saves and reports."""

    def on_error(self, trainer: Trainer, error: BaseException) -> None:
        """The run is failing with `error` (re-raised after every callback's on_error, before
        close): mark it failed where it is reported. Never save state here: it may be broken."""

    def close(self) -> None:
        """Always, last (files and loggers)."""


class TrainStep(Protocol):
    def forward_backward(self, settings: Any) -> dict[str, float]:
        """The step's loss and gradients: its metrics (at least loss and lm loss)."""

    def optim_step(self, metrics: dict[str, float]) -> dict[str, float]:
        """The update (skipped on a non-finite loss or gradient), advancing `state.step`: at
        least lr, grad_norm and skipped."""


class Trainer:
    """Runs `step` on `state` (whose `step` it advances) until `total` (or `stop`).
    `schedule(progress)`: the settings each step is given, from the run's progress in [0, 1]
    (None: the step gets None)."""

    def __init__(self, state, step: TrainStep, *, total: int, stop: int | None = None, tokens_per_step: int,
                 callbacks: list[Callback] = (), schedule: Callable[[float], Any] | None = None):
        self.state, self.step, self.schedule = state, step, schedule
        self.total, self.stop = total, min(total, stop or total)
        self.tokens_per_step = tokens_per_step
        self.callbacks = sorted(callbacks, key=lambda cb: -cb.priority)  # stable: ties keep their order
        self.start_step = state.step
        self.started_at = time.perf_counter()
        self.cancelled: str | None = None  # the status a callback ended the run with
        self._out: StepOutput | None = None

    def cancel(self, status: str) -> None:
        """End the run after the current step's callbacks (status: see STATUSES)."""
        assert status in STATUSES, status
        self.cancelled = status

    def record(self, key: str, value, *, metric: bool = False) -> None:
        """Add `key` to this step's record (and with `metric` to its metrics: the console line
        and the run's result). One writer per key: a second is a wiring error."""
        assert self._out is not None, "record() is for after_step"
        assert key not in self._out.record, f"{key} recorded twice at step {self._out.step}"
        self._out.record[key] = value
        if metric:
            self._out.metrics[key] = value

    def fit(self) -> TrainResult:
        state = self.state
        self.start_step = state.step
        metrics: dict[str, float] = {}
        try:
            if state.step >= self.stop:  # nothing to do: no callback runs but close()
                status = "already_complete" if state.step >= self.total else "stopped"
                return TrainResult(status, state.step, self.total, 0)
            self._each("on_start")
            self.started_at = time.perf_counter()
            while state.step < self.stop and self.cancelled is None:
                metrics = self._one_step()
            status = self.cancelled or ("completed" if state.step >= self.total else "stopped")
            self._each("on_end", status)
        except BaseException as error:
            self._tell_error(error)
            raise
        finally:
            for cb in self.callbacks:
                cb.close()
        return TrainResult(status, state.step, self.total, state.step - self.start_step, metrics)

    def _one_step(self) -> dict[str, float]:
        state = self.state
        self._each("before_step")
        settings = self.schedule(state.step / max(1, self.total)) if self.schedule is not None else None
        t0 = time.perf_counter()
        metrics = dict(self.step.forward_backward(settings))
        self._each("pre_optim_step", state.step + 1)
        metrics.update(self.step.optim_step(metrics))
        dt = time.perf_counter() - t0
        self._out = StepOutput(state.step, metrics, self._base_record(state.step, metrics, dt), dt,
                               state.step == self.total, settings)
        try:
            self._each("after_step", self._out)
        finally:
            self._out = None
        return metrics

    def _tell_error(self, error: BaseException) -> None:
        """Every callback's on_error; one that fails itself is logged, not raised, so the run's
        own error is the one that reaches the user."""
        for cb in self.callbacks:
            try:
                cb.on_error(self, error)
            except Exception:  # noqa: BLE001 - the original error matters more than a reporter's
                log.exception("%s.on_error failed while the run was failing", type(cb).__name__)

    def _each(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _base_record(self, step: int, m: dict, seconds: float) -> dict:
        return {"step": step, "tokens": step * self.tokens_per_step, "loss": m["loss"], "lm_loss": m["lm loss"],
                "lr": m["lr"], "grad_norm": m["grad_norm"], "tokens_per_s": self.tokens_per_step / seconds,
                "skipped": int(m["skipped"]), **{k: v for k, v in m.items() if k.startswith("moe_")}}
