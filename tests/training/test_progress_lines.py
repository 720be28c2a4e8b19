"""The lines a run prints while it works: the step line names the loss it prints
(training/metrics.py), and a teacher-cache job says its micro-batch count and ETA every period
(training/teacher_cache.py), and a run with a long log interval says its step every period
(training/callbacks.py). No training: fast."""

import logging
import time
from types import SimpleNamespace

from megatron_kd.console import Every
from megatron_kd.training import callbacks
from megatron_kd.training.metrics import MetricsWriter, loss_field
from megatron_kd.training.teacher_cache import CacheProgress, _micro_batches


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_the_step_line_names_its_loss(tmp_path, caplog):
    assert loss_field({"loss": 5.25}) == "loss (train CE) 5.2500"
    kd = {"loss": 0.0524, "lm loss": 4.9123, "kd loss": 0.0524, "alpha": 1.0}
    assert loss_field(kd) == "loss (train objective: mix of CE and T^2*KD) 0.0524 (CE 4.9123, T^2*KD 0.0524, alpha 1)"
    writer = MetricsWriter(tmp_path, tensorboard=False, enabled=True)
    with caplog.at_level(logging.INFO, logger="megatron_kd.train"):
        writer.console(20, 80, 2560, {**kd, "lr": 1e-3, "grad_norm": 0.5}, 1000.0, 90.0)
    writer.close()
    assert "step 20/80 | tokens 2560 | loss (train objective: mix of CE and T^2*KD) 0.0524 (CE 4.9123" in caplog.text
    assert "| ETA 0:01:30" in caplog.text


def test_a_cache_job_says_its_micro_batches_every_period(caplog):
    clock = Clock()
    progress = CacheProgress(micro_batches=40, num_shards=2, chunks=2, every=Every(25, clock))
    with caplog.at_level(logging.INFO, logger="megatron_kd.cache"):
        for _ in range(20):  # 10 micro-batches, each started by both virtual stages' chunks
            clock.t += 1
            progress.step(0)
        clock.t = 25
        progress.step(0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["teacher cache: micro-batch 10/40 (shard 1/2) | ETA 0:01:15"], lines  # 25 s for a quarter


def test_a_shards_micro_batches_as_the_job_pads_them():
    planned = {"shard_rows": 10, "num_samples": 25}
    assert [_micro_batches(planned, j, 4, 1, 1) for j in range(3)] == [3, 3, 2]  # 10 -> 12 rows, 5 -> 8
    assert _micro_batches(planned, 0, 4, 2, 2) == 4  # virtual stages: whole groups of PP micro-batches


def test_a_run_with_a_long_log_interval_still_says_its_step_every_period():
    clock, lines, records = Clock(), [], []
    writer = SimpleNamespace(console=lambda step, *a: lines.append(step), write=records.append)
    logging_cb = callbacks.Logging(writer, interval=100, every=Every(25, clock))
    trainer = SimpleNamespace(started_at=time.perf_counter(), start_step=0, total=300, tokens_per_step=8)
    for step in range(1, 201):
        clock.t = 10.0 * step  # 10 s a step
        out = SimpleNamespace(step=step, record={"step": step}, last=False, seconds=10.0, metrics={})
        logging_cb.after_step(trainer, out)
    assert lines[:4] == [3, 6, 9, 12] and 100 in lines and 200 in lines  # every 30 s, and at the interval
    assert 101 not in lines and 103 in lines  # the quiet period restarts at the interval's line
    assert [r["step"] for r in records] == [100, 200]  # the record keeps its interval
