"""The callbacks of a training run (training/trainer.py), in the order their priorities run them:
the KD reports, profiling, the non-finite-step budget, throughput, evaluation, logging,
preemption and checkpointing. Each takes what it needs in its constructor (no process-wide
state) and none holds another: what one measures it records through the trainer, and a later
one (lower priority) reads it from the step's output, so a test can drive one with a fake
trainer and fake steps."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from megatron_kd.console import Every
from megatron_kd.errors import MKDError
from megatron_kd.files import write_text_atomic
from megatron_kd.runtime.throughput import Profiler, device_name, step_throughput
from megatron_kd.training.steps import KD_REPORTS
from megatron_kd.training.trainer import Callback, StepOutput, Trainer

log = logging.getLogger("megatron_kd.train")


class KDReports(Callback):
    """A KD step's α and T (the settings the trainer's schedule gave it: steps.KDSettings) into
    its metrics, and with the KD loss's reports into its record."""

    priority = 80

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        trainer.record("alpha", out.settings.alpha, metric=True)
        trainer.record("temperature", out.settings.temperature, metric=True)
        for k in KD_REPORTS:
            if k in out.metrics:
                trainer.record(k.replace(" ", "_"), out.metrics[k])


class Profile(Callback):
    """`mkd train --profile-steps N`: times the teacher forward and the KD loss (sections of
    `profiler`, which the model and the loss share) over N steps after the first, then logs
    their shares of the step and writes RUN_DIR/profile.json (rank 0)."""

    priority = 70

    def __init__(self, profiler: Profiler, steps: int, run_dir: Path, write: bool):
        self.profiler, self.steps, self.run_dir, self.write = profiler, steps, run_dir, write
        self.times: list[float] = []

    def before_step(self, trainer: Trainer) -> None:
        if trainer.state.step == trainer.start_step + 1 and not self.profiler.active:
            self.profiler.start()

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        if not self.profiler.active:
            return
        self.times.append(out.seconds)
        if len(self.times) == self.steps or out.step == trainer.stop:
            self._report(self.profiler.stop(), out.step)

    def _report(self, sections: dict, last: int) -> None:
        n, total = len(self.times), sum(self.times)
        shares = {k: v / total for k, v in sections.items()}
        log.info("profile over %d steps (to step %d): %.1f ms a step; %s", n, last, 1e3 * total / n,
                 "; ".join(f"{k} {1e3 * v / n:.1f} ms ({100 * shares[k]:.1f}%)" for k, v in sections.items())
                 or "no teacher forward or KD loss in these steps")
        if self.write:
            write_text_atomic(self.run_dir / "profile.json", json.dumps(
                {"steps": n, "last_step": last, "step_s": total / n,
                 "sections_s": {k: v / n for k, v in sections.items()}, "shares": shares}, indent=2))


class SkipBudget(Callback):
    """A step whose loss or gradient norm is not finite is skipped by train_step (no update);
    more than `budget` in a row stop the run with one line naming the last good checkpoint."""

    priority = 60  # before the step is logged or saved: a run over its budget ends here

    def __init__(self, budget: int, latest_checkpoint: Callable[[], Path | None]):
        self.budget, self.latest = budget, latest_checkpoint
        self.in_a_row = 0

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        m = out.metrics
        self.in_a_row = self.in_a_row + 1 if m["skipped"] else 0
        if not self.in_a_row:
            return
        log.warning("step %d skipped: non-finite loss %.4g or grad norm %.4g (%d in a row, budget %d)",
                    out.step, m["loss"], m["grad_norm"], self.in_a_row, self.budget)
        if self.in_a_row > self.budget:
            raise MKDError(
                f"{self.in_a_row} consecutive steps had a non-finite loss or gradient (step {out.step}); "
                f"stopping. The last good checkpoint is {self.latest() or '(none yet)'}; lower train.lr "
                "or check the data, then start again (it resumes from there)")


class Throughput(Callback):
    """Tokens/s per GPU, TFLOP/s per GPU and MFU (with a known peak) into the record."""

    priority = 50

    def __init__(self, world: int, flops_per_token: float, peak_tflops: float | None):
        self.world, self.flops, self.peak = world, flops_per_token, peak_tflops

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        speed = step_throughput(trainer.tokens_per_step, out.seconds, self.world, self.flops, self.peak)
        for k, v in speed.items():
            if v is not None:
                trainer.record(k, v)


class Evaluation(Callback):
    """Validation losses every `interval` steps and at the last one (val/NAME in record and
    metrics). `evaluate()` returns {name: loss}."""

    priority = 40

    def __init__(self, interval: int, evaluate: Callable[[], dict]):
        self.interval, self.evaluate = interval, evaluate

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        if (self.interval and out.step % self.interval == 0) or out.last:
            for name, value in self.evaluate().items():
                trainer.record(f"val/{name}", value, metric=True)


class Logging(Callback):
    """The console line every `interval` steps (and at evaluations and the last step), and the
    record to metrics.jsonl / TensorBoard / W&B (`writer`: training/metrics.MetricsWriter). A run
    whose interval takes longer than PROGRESS_EVERY_S also gets the console line (only) when that
    much time has passed since the last: a sweep follows its runs by their logs' step lines.
    It reads what the callbacks before it recorded (validation losses, TFLOP/s and MFU)."""

    priority = 30

    def __init__(self, writer, interval: int, every: Every | None = None):
        self.writer, self.interval = writer, interval
        self.every = every or Every()

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        validated = any(k.startswith("val/") for k in out.record)
        logged = out.step % self.interval == 0 or out.last or validated
        if not (self.every.due() or logged):
            return
        self.every.last = self.every.clock()  # a line said: the next in a full period at most
        elapsed = time.perf_counter() - trainer.started_at
        eta = elapsed / max(1, out.step - trainer.start_step) * (trainer.total - out.step)
        extra = ""
        if "tflops_per_gpu" in out.record:  # recorded by Throughput
            per = "/GPU" if device_name() else ""  # a CPU process is not a GPU: its rate is per process
            extra = f" | {out.record['tflops_per_gpu']:.3g} TFLOP/s{per}" + (
                f" (MFU {100 * out.record['mfu']:.1f}%)" if "mfu" in out.record else "")
        tps = trainer.tokens_per_step / out.seconds
        self.writer.console(out.step, trainer.total, out.step * trainer.tokens_per_step, out.metrics, tps, eta, extra)
        if not logged:
            return
        vals = {k: v for k, v in out.record.items() if k.startswith("val/")}
        if vals:
            log.info("validation at step %d: %s", out.step, " | ".join(f"{k[4:]} {v:.4f}" for k, v in vals.items()))
        self.writer.write(out.record)

    def on_error(self, trainer: Trainer, error: BaseException) -> None:
        self.writer.failed = True  # W&B shows the run as failed, not finished

    def close(self) -> None:
        self.writer.close()


class Preemption(Callback):
    """A preemption signal (SIGUSR1 / SIGTERM, on any rank: `requested()` agrees across ranks)
    cancels the run after this step with status "preempted"; Checkpointing (lower priority)
    writes the checkpoint. At the last step the run just completes (its final save is the
    checkpoint)."""

    priority = 20

    def __init__(self, requested: Callable[[], bool], signal_names: Callable[[], str]):
        self.requested, self.signal_names = requested, signal_names

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        if self.requested():
            log.warning("preemption signal %s at step %d: checkpointing, then exiting for requeue",
                        self.signal_names(), out.step)
            if not out.last:
                trainer.cancel("preempted")


class Checkpointing(Callback):
    """Saves what the Checkpointer's policy says is due: token budgets, periodic saves, the
    checkpoint of a run cancelled as preempted, and at the end the stop or final one.
    `save(due)` is collective. Last: a step is saved once everything else has acted on it."""

    priority = 10

    def __init__(self, checkpointer, save: Callable):
        self.checkpointer, self.save = checkpointer, save

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        preempted = trainer.cancelled == "preempted"
        for due in self.checkpointer.due(out.step, trainer.total, preempted=preempted):
            self.save(due)

    def on_end(self, trainer: Trainer, status: str) -> None:
        due = self.checkpointer.due_at_end(trainer.state.step, trainer.start_step, trainer.total)
        if due is not None:
            self.save(due)
