"""The trainer's loop, its callbacks and the Checkpointer's save policy, with fake steps: what a
run does around its steps (statuses, preemption, the skip budget, evaluation, logging, which
checkpoint is due when) without a model. The real runs (tests/e2e/test_pretraining.py,
tests/e2e/test_reliability.py) check the same mechanisms end to end."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from megatron_kd.checkpoint.checkpointer import Checkpointer, SaveDue
from megatron_kd.config import load_config
from megatron_kd.errors import MKDError
from megatron_kd.training import callbacks
from megatron_kd.training.faults import Faults
from megatron_kd.training.steps import KDSettings
from megatron_kd.training.trainer import Callback, Trainer

TOKENS_PER_STEP = 4 * 32  # tiny-mock: global batch 4, sequence 32


def _cfg(*overrides: str):
    return load_config("train/tiny-mock", ["run.dir=/nonexistent/run", *overrides])


class _FakeStep:
    """A step that reports loss 1/step (or `losses[step]`) and advances the state in its
    optimizer half; `calls` lists both halves with the settings each step was given."""

    def __init__(self, state, losses=None):
        self.state, self.losses, self.calls = state, losses or {}, []

    def forward_backward(self, settings):
        self.calls.append(("forward_backward", self.state.step + 1, settings))
        loss = self.losses.get(self.state.step + 1, 1.0 / (self.state.step + 1))
        return {"loss": loss, "lm loss": loss}

    def optim_step(self, metrics):
        self.state.step += 1
        self.calls.append(("optim_step", self.state.step))
        return {"lr": 1e-3, "grad_norm": 0.5, "skipped": 0.0 if math.isfinite(metrics["loss"]) else 1.0}


class _Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_start(self, trainer):
        self.events.append(("start", trainer.state.step))

    def after_step(self, trainer, out):
        self.events.append(("step", out.step, out.last))

    def on_end(self, trainer, status):
        self.events.append(("end", status))

    def close(self):
        self.events.append(("close",))


class _Saves:
    """Checkpointing's save function: records (name, kind) instead of writing."""
    def __init__(self, checkpointer):
        self.checkpointer, self.saved = checkpointer, []

    def __call__(self, due: SaveDue):
        self.saved.append((due.name, due.kind))
        if due.kind == "periodic":
            self.checkpointer.last_periodic_step = int(due.name.split("_")[1])


def test_fit_runs_to_the_end_and_calls_every_hook_in_order():
    state = SimpleNamespace(step=0)
    rec = _Recorder()
    result = Trainer(state, _FakeStep(state), total=3, tokens_per_step=TOKENS_PER_STEP, callbacks=[rec]).fit()
    assert (result.status, result.step, result.total, result.steps_run) == ("completed", 3, 3, 3)
    assert result.metrics["loss"] == pytest.approx(1 / 3)
    assert rec.events == [("start", 0), ("step", 1, False), ("step", 2, False), ("step", 3, True),
                          ("end", "completed"), ("close",)]


class _Named(Callback):
    """Logs (name, hook, step) into a shared list; `act(trainer, out)` runs in after_step."""

    def __init__(self, name, priority, log, act=None):
        self.name, self.priority, self.log, self.act = name, priority, log, act

    def before_step(self, trainer):
        self.log.append((self.name, "before", trainer.state.step + 1))

    def pre_optim_step(self, trainer, step):
        self.log.append((self.name, "pre_optim", step))

    def after_step(self, trainer, out):
        self.log.append((self.name, "after", out.step))
        if self.act is not None:
            self.act(trainer, out)

    def on_end(self, trainer, status):
        self.log.append((self.name, "end", status))


def test_callbacks_run_by_priority_then_in_the_order_given():
    state, log = SimpleNamespace(step=0), []
    cbs = [_Named("low", 0, log), _Named("high", 50, log), _Named("mid-a", 10, log), _Named("mid-b", 10, log)]
    Trainer(state, _FakeStep(state), total=1, tokens_per_step=1, callbacks=cbs).fit()
    order = ["high", "mid-a", "mid-b", "low"]
    assert [e[0] for e in log if e[1] == "before"] == order
    assert [e[0] for e in log if e[1] == "pre_optim"] == order
    assert [e[0] for e in log if e[1] == "after"] == order
    assert [e[0] for e in log if e[1] == "end"] == order


def test_a_recorded_value_is_seen_by_lower_priorities_and_written_once():
    state, log, seen = SimpleNamespace(step=0), [], {}

    def measure(trainer, out):
        trainer.record("speed", 2.0 * out.step)  # the record only (metrics.jsonl)
        trainer.record("val/x", 1.0 * out.step, metric=True)  # also the console line and the result

    def read(name):
        return lambda trainer, out: seen.setdefault(name, []).append(
            (out.record.get("speed"), out.metrics.get("val/x")))

    cbs = [_Named("reader", 1, log, read("after")), _Named("writer", 10, log, measure),
           _Named("early", 20, log, read("before"))]
    result = Trainer(state, _FakeStep(state), total=2, tokens_per_step=1, callbacks=cbs).fit()
    assert seen == {"before": [(None, None), (None, None)], "after": [(2.0, 1.0), (4.0, 2.0)]}
    assert result.metrics["val/x"] == 2.0 and "speed" not in result.metrics

    def twice(trainer, out):
        trainer.record("loss", 0.0)  # the trainer's own key

    fresh = SimpleNamespace(step=0)
    with pytest.raises(AssertionError, match="loss recorded twice at step 1"):
        Trainer(fresh, _FakeStep(fresh), total=2, tokens_per_step=1, callbacks=[_Named("again", 0, [], twice)]).fit()


def test_cancel_ends_the_run_after_that_steps_callbacks():
    state, log = SimpleNamespace(step=0), []

    def cancel_at_2(trainer, out):
        if out.step == 2:
            trainer.cancel("preempted")

    def seen_by_later(trainer, out):
        log.append(("saver", "cancelled", trainer.cancelled))

    cbs = [_Named("saver", 0, log, seen_by_later), _Named("signal", 5, log, cancel_at_2)]
    result = Trainer(state, _FakeStep(state), total=5, tokens_per_step=1, callbacks=cbs).fit()
    assert (result.status, result.step, result.steps_run) == ("preempted", 2, 2)
    assert [e for e in log if e[0] == "saver" and e[1] != "before"] == [
        ("saver", "pre_optim", 1), ("saver", "after", 1), ("saver", "cancelled", None),
        ("saver", "pre_optim", 2), ("saver", "after", 2), ("saver", "cancelled", "preempted"),
        ("saver", "end", "preempted")]


def test_pre_optim_step_comes_once_per_step_between_backward_and_the_optimizer():
    state = SimpleNamespace(step=0)
    step = _FakeStep(state)

    class Probe(Callback):
        def pre_optim_step(self, trainer, n):
            step.calls.append(("pre_optim_step", n, trainer.state.step))  # state.step not yet advanced

    Trainer(state, step, total=3, tokens_per_step=1, callbacks=[Probe()], schedule=lambda p: round(p, 3)).fit()
    assert step.calls == [c for n in (1, 2, 3) for c in (
        ("forward_backward", n, round((n - 1) / 3, 3)), ("pre_optim_step", n, n - 1), ("optim_step", n))]


def test_nothing_to_do_is_already_complete_or_stopped_and_still_closes():
    for step, stop, status in ((5, None, "already_complete"), (2, 2, "stopped")):
        state, rec = SimpleNamespace(step=step), _Recorder()
        result = Trainer(state, _FakeStep(state), total=5, stop=stop, tokens_per_step=1, callbacks=[rec]).fit()
        assert (result.status, result.steps_run, result.step) == (status, 0, step)
        assert rec.events == [("close",)]


def test_stop_at_step_stops_early_and_leaves_a_checkpoint():
    cfg = _cfg("train.steps=10", "checkpoint.save_interval=0", "checkpoint.save_at_tokens=[]")
    state = SimpleNamespace(step=0)
    ck = Checkpointer(cfg)
    saves = _Saves(ck)
    result = Trainer(state, _FakeStep(state), total=10, stop=4, tokens_per_step=TOKENS_PER_STEP,
                     callbacks=[callbacks.Checkpointing(ck, saves)]).fit()
    assert (result.status, result.step) == ("stopped", 4)
    assert saves.saved == [("step_0000004", "periodic")]


def test_preemption_saves_budgets_then_a_periodic_checkpoint_and_stops():
    # a token budget crossed at the very step the signal arrives is still saved (then the
    # preemption checkpoint); the run ends with status "preempted" and no second save
    budget = 3 * TOKENS_PER_STEP
    cfg = _cfg("train.steps=10", "checkpoint.save_interval=0", f"checkpoint.save_at_tokens=[{budget}]")
    state = SimpleNamespace(step=0)
    ck = Checkpointer(cfg)
    saves = _Saves(ck)
    stop = callbacks.Preemption(lambda: state.step >= 3, lambda: "SIGUSR1")
    result = Trainer(state, _FakeStep(state), total=10, tokens_per_step=TOKENS_PER_STEP,
                     callbacks=[callbacks.Checkpointing(ck, saves), stop]).fit()  # priority, not list order
    assert (result.status, result.step) == ("preempted", 3)
    assert saves.saved == [(f"tokens_{budget}", "budget"), ("step_0000003", "periodic")]


def test_preemption_at_the_last_step_completes_with_the_final_checkpoint():
    cfg = _cfg("train.steps=3", "checkpoint.save_interval=0", "checkpoint.save_at_tokens=[]")
    state = SimpleNamespace(step=0)
    ck = Checkpointer(cfg)
    saves = _Saves(ck)
    stop = callbacks.Preemption(lambda: state.step == 3, lambda: "SIGTERM")
    result = Trainer(state, _FakeStep(state), total=3, tokens_per_step=TOKENS_PER_STEP,
                     callbacks=[stop, callbacks.Checkpointing(ck, saves)]).fit()
    assert result.status == "completed"
    assert saves.saved == [("step_0000003", "final")]


def test_save_policy():
    cfg = _cfg("train.steps=10", "checkpoint.save_interval=4",
               f"checkpoint.save_at_tokens=[{TOKENS_PER_STEP * 2 + 1}, {TOKENS_PER_STEP * 8}, {TOKENS_PER_STEP * 10}]")
    ck = Checkpointer(cfg)
    due = {s: [(d.name, d.kind) for d in ck.due(s, 10)] for s in range(1, 11)}
    # a budget is saved at the first step reaching it; periodic every 4 steps but not at the
    # last (the final save covers it)
    assert due[3] == [(f"tokens_{TOKENS_PER_STEP * 2 + 1}", "budget")]
    assert due[4] == [("step_0000004", "periodic")]
    assert due[8] == [(f"tokens_{TOKENS_PER_STEP * 8}", "budget"), ("step_0000008", "periodic")]
    assert due[10] == [(f"tokens_{TOKENS_PER_STEP * 10}", "budget")]
    assert not any(due[s] for s in (1, 2, 5, 6, 7, 9))
    assert [(d.name, d.kind) for d in ck.due(5, 10, preempted=True)] == [("step_0000005", "periodic")]
    # end of run: final (save_at_end), a stop's periodic unless just written, nothing if no step ran
    assert ck.due_at_end(10, 0, 10) == SaveDue("step_0000010", "final")
    assert ck.due_at_end(10, 10, 10) is None
    assert ck.due_at_end(6, 0, 10) == SaveDue("step_0000006", "periodic")
    ck.last_periodic_step = 6
    assert ck.due_at_end(6, 0, 10) is None
    assert Checkpointer(_cfg("checkpoint.save_at_end=false")).due_at_end(10, 0, 10) is None


def test_skip_budget_counts_consecutive_skips_and_names_the_last_checkpoint():
    state = SimpleNamespace(step=0)
    nan = math.nan
    budget = callbacks.SkipBudget(2, lambda: "/runs/x/checkpoints/step_0000002")
    # steps 3 and 4 skipped, 5 fine (the count resets), then 6, 7, 8 in a row: over the budget
    losses = {3: nan, 4: nan, 6: nan, 7: nan, 8: nan}
    with pytest.raises(MKDError, match=r"3 consecutive steps .* \(step 8\).*step_0000002"):
        Trainer(state, _FakeStep(state, losses), total=20, tokens_per_step=1, callbacks=[budget]).fit()
    assert state.step == 8


def test_evaluation_logging_and_the_kd_schedule_fill_the_record():
    cfg = _cfg("kd.alpha=0.5", "kd.alpha_schedule.kind=linear", "kd.alpha_schedule.final=0.0")
    state = SimpleNamespace(step=0)
    evals = []

    def evaluate():
        evals.append(state.step)
        return {"indomain": 2.0 + state.step}

    class Writer:
        def __init__(self):
            self.records, self.lines, self.closed = [], [], False

        def console(self, step, total, tokens, m, tok_per_s, eta, extra):
            self.lines.append((step, total, tokens, extra))

        def write(self, record):
            self.records.append(dict(record))

        def close(self):
            self.closed = True

    writer = Writer()
    speed = callbacks.Throughput(world=2, flops_per_token=1e6, peak_tflops=None)
    cbs = [callbacks.Logging(writer, interval=4), callbacks.Evaluation(2, evaluate), speed, callbacks.KDReports()]
    step = _FakeStep(state)
    result = Trainer(state, step, total=5, tokens_per_step=TOKENS_PER_STEP, callbacks=cbs,
                     schedule=lambda progress: KDSettings.scheduled(cfg.kd, progress)).fit()
    given = [c[2] for c in step.calls if c[0] == "forward_backward"]
    assert given[1] == KDSettings(pytest.approx(0.5 * (1 - 1 / 5)), 1.0)  # step 2: progress 1/5
    assert evals == [2, 4, 5]  # every 2 steps and the last
    assert [r["step"] for r in writer.records] == [2, 4, 5]  # logged at evaluations too
    assert writer.closed and result.metrics["val/indomain"] == 7.0
    r2 = writer.records[0]
    assert r2["val/indomain"] == 4.0 and r2["tokens"] == 2 * TOKENS_PER_STEP
    assert r2["alpha"] == pytest.approx(0.5 * (1 - 1 / 5))  # set before step 2, at progress 1/5
    assert r2["tokens_per_s_per_gpu"] == pytest.approx(r2["tokens_per_s"] / 2)
    assert "mfu" not in r2 and "TFLOP/s" in writer.lines[0][3] and "GPU" not in writer.lines[0][3]


def test_faults_are_read_once_and_absent_by_default():
    none = Faults.from_env({})
    assert none.callbacks() == [] and none.save_hook() is None and none.cache_shard_hook() is None
    f = Faults.from_env({"MKD_INJECT_NAN_STEPS": "3, 4", "MKD_INJECT_KILL_IN_SAVE": "6:after_shards",
                         "MKD_INJECT_KILL_CACHE_SHARD": "1"})
    assert f == Faults(frozenset({3, 4}), (6, "after_shards"), 1)
    import torch

    p = torch.nn.Parameter(torch.zeros(2))
    p.main_grad = torch.zeros(2)
    chunk = torch.nn.Module()
    chunk.w = p
    [poison] = f.callbacks()
    trainer = SimpleNamespace(state=SimpleNamespace(model=[chunk]))
    poison.pre_optim_step(trainer, 2)
    assert torch.equal(p.main_grad, torch.zeros(2))
    poison.pre_optim_step(trainer, 3)
    assert torch.isnan(p.main_grad).all()


def test_the_teacher_identity_the_launch_read_is_handed_down():
    from megatron_kd.training import resolve

    launch = resolve.CheckedLaunch(teacher_checked=True, teacher_identity={"checkpoint": "/t", "step": 3})
    assert resolve.resolve_run(_cfg(), checked=launch, resume=False).teacher_identity == {"checkpoint": "/t", "step": 3}
    assert resolve.resolve_run(_cfg(), resume=False).teacher_identity is None  # not read: the run reads it


def test_a_failing_run_tells_every_callback_before_closing_and_raises_its_own_error(tmp_path):
    """on_error reaches every callback (one that fails itself does not hide the run's error),
    then close; on_end does not run; Logging marks the writer failed (W&B's exit code 1)."""
    class Broken(_FakeStep):
        def optim_step(self, metrics):
            if self.state.step == 1:
                raise RuntimeError("the optimizer step failed")
            return super().optim_step(metrics)

    class Told(_Recorder):
        def on_error(self, trainer, error):
            self.events.append(("error", str(error)))

    class Clumsy(Callback):
        priority = 99

        def on_error(self, trainer, error):
            raise ValueError("a reporter's own bug")

    from megatron_kd.training.metrics import MetricsWriter
    state = SimpleNamespace(step=0)
    told, writer = Told(), MetricsWriter(tmp_path, tensorboard=False, enabled=True)
    trainer = Trainer(state, Broken(state), total=3, tokens_per_step=TOKENS_PER_STEP,
                      callbacks=[told, Clumsy(), callbacks.Logging(writer, interval=1)])
    with pytest.raises(RuntimeError, match="the optimizer step failed"):
        trainer.fit()
    assert told.events == [("start", 0), ("step", 1, False), ("error", "the optimizer step failed"), ("close",)]
    assert writer.failed and writer.jsonl.closed
