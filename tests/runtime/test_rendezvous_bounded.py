"""A process whose peers never come (a RANK / WORLD_SIZE left in a shell) says what it waits
for, honours SIGTERM while it waits, and gives up after run.rendezvous_timeout_s with one line
(exit 3) instead of hanging in the C++ rendezvous. Real `mkd train` processes."""

from __future__ import annotations

import selectors
import signal
import subprocess
import time

import pytest

from megatron_kd.runtime.distributed import free_port
from tests.distributed import REPO
from tests.helpers import MKD, env_with

pytestmark = pytest.mark.slow


def _start(tmp_path, *extra):
    env = env_with(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    for k in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(k, None)
    return subprocess.Popen([*MKD, "train", "train/tiny-mock", f"run.dir={tmp_path / 'run'}", "train.steps=2",
                             "train.warmup_steps=0", *extra], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def test_sigterm_while_waiting_for_peers_ends_at_once(tmp_path):
    proc = _start(tmp_path)
    try:
        line, deadline = "", time.monotonic() + 90
        with selectors.DefaultSelector() as sel:  # a bounded wait: no line must fail, not hang
            sel.register(proc.stderr, selectors.EVENT_READ)
            while "waiting up to" not in line:
                assert time.monotonic() < deadline and proc.poll() is None, "no 'waiting' line"
                if sel.select(timeout=1):
                    line = proc.stderr.readline()
        assert "for 2 processes at 127.0.0.1:" in line and "RANK / WORLD_SIZE from the environment" in line
        time.sleep(1)  # inside the C++ rendezvous now
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert time.monotonic() - t0 < 5 and proc.returncode in (-signal.SIGTERM, 143)
    finally:
        proc.kill()
        proc.wait()


def test_rendezvous_times_out_with_one_line(tmp_path):
    proc = _start(tmp_path, "run.rendezvous_timeout_s=2")
    _, err = proc.communicate(timeout=120)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert proc.returncode == 3 and len(errors) == 1, err[-2000:]
    assert "waited 2 s for 2 processes" in errors[0] and "unset RANK / WORLD_SIZE" in errors[0]
    assert "Traceback" not in err
