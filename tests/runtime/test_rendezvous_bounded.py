"""A process whose peers never come (a RANK / WORLD_SIZE left in a shell) says what it waits
for, honours SIGTERM while it waits, and gives up after run.rendezvous_timeout_s with one line
(exit 3) instead of hanging in the C++ rendezvous; the run directory that launch made is removed
again. A MASTER_ADDR that does not resolve is refused before anything starts. Real `mkd train`
processes."""

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


def _start(tmp_path, *extra, rank="1", addr="127.0.0.1"):
    env = env_with(RANK=rank, WORLD_SIZE="2", MASTER_ADDR=addr, MASTER_PORT=str(free_port()))
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


def test_failed_rendezvous_of_rank0_leaves_no_run_dir(tmp_path):
    proc = _start(tmp_path, "run.rendezvous_timeout_s=2", rank="0")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3 and "waited 2 s" in err, err[-2000:]
    assert not (tmp_path / "run").exists(), "the failed launch left its run dir (and lock) behind"


def test_unresolvable_master_addr_is_one_line_before_anything_starts(tmp_path):
    proc = _start(tmp_path, addr="no-such-host.invalid")
    _, err = proc.communicate(timeout=60)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert proc.returncode == 2 and len(errors) == 1, err[-2000:]
    assert "'no-such-host.invalid' (MASTER_ADDR) does not resolve" in errors[0]
    assert "waiting up to" not in err and not (tmp_path / "run").exists()
