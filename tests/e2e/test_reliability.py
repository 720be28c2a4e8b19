"""Non-finite steps are skipped within a budget; past it the run stops keeping the last good
checkpoint; a checkpoint carrying a malicious pickle is refused; a run directory holds one run;
SIGKILL in the middle of a save or of a run loses nothing and the run resumes exactly; a
preemption warning that arrives while the trainer is still starting up is kept, not fatal."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distributed import REPO
from tests.helpers import ENV, MKD, env_with, mkd, mkd_in_process, read_metrics


@pytest.mark.slow  # a whole training run
def test_nan_steps_are_skipped_then_budget_stops_the_run(tmp_path):
    """Two non-finite steps in a row are within a budget of 2 and skipped; the run learns on; three
    in a row later (the count restarted at the good steps between) stop it."""
    r = mkd("train", "train/tiny-mock", f"run.dir={tmp_path / 'a'}", "train.steps=10",
            "train.max_consecutive_skips=2", "checkpoint.save_interval=1", "logging.eval_interval=6",
            env=env_with(MKD_INJECT_NAN_STEPS="3,4,7,8,9"), check=False)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    m = read_metrics(tmp_path / "a")
    assert [x["skipped"] for x in m[:8]] == [0, 0, 1, 1, 0, 0, 1, 1], m
    assert m[2]["lr"] == m[3]["lr"] == m[4]["lr"]  # the schedule waits for a real update
    assert all(x["loss"] == x["loss"] for x in m) and m[5]["val/mock"] < 6  # finite, learning
    assert "step 3 skipped" in r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert "3 consecutive steps had a non-finite loss or gradient" in last
    # Skipped steps leave the parameters untouched: the newest checkpoint is still good.
    latest = (tmp_path / "a" / "checkpoints" / "latest").read_text()
    assert latest in last and "Traceback" not in r.stderr


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('MKD_PWNED', '/tmp/mkd_pwned')}",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 3-step run; a test copies it (a run directory may move) before touching it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert mkd("train", "train/tiny-mock", f"run.dir={run}", "train.steps=3").returncode == 0
    return run


@pytest.mark.slow  # resumes the run whose checkpoint it forges
def test_malicious_pickle_in_a_checkpoint_is_refused(finished_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    rng = run / "checkpoints" / "step_0000003" / "rng" / "rank0.pt"
    marker = tmp_path / "pwned"
    monkeypatch.setenv("MKD_PWNED", str(marker))
    with open(rng, "wb") as f:
        pickle.dump({"cpu": _Evil()}, f)
    # The swapped file no longer has the size the save recorded: refused before loading, before
    # any rank starts (so in this process).
    rc, _, err = mkd_in_process(capsys, "train", "train/tiny-mock", f"run.dir={run}", "train.steps=4")
    assert rc == 2 and "rng/rank0.pt has" in err.strip().splitlines()[-1], err[-2000:]
    assert not marker.exists()
    # An attacker who also fixes the recorded size still gets nothing executed: weights_only.
    state_file = run / "checkpoints" / "step_0000003" / "mkd_state.json"
    state = json.loads(state_file.read_text())
    state["files"]["rng/rank0.pt"] = rng.stat().st_size
    # ... and its checksum, and the state file's own (CRC-32 is no secret: a forger can)
    from megatron_kd.checkpoint.refs import file_checksum, state_checksum

    state["checksums"]["rng/rank0.pt"] = file_checksum(rng)
    state["state_crc"] = state_checksum(state)
    state_file.write_text(json.dumps(state))
    r = mkd("train", "train/tiny-mock", f"run.dir={run}", "train.steps=4",
            env=env_with(MKD_PWNED=str(marker)), check=False)
    assert r.returncode == 2 and "refused to load" in r.stderr.strip().splitlines()[-1]
    assert not marker.exists()


@pytest.mark.slow
def test_a_different_run_in_the_run_dir_is_refused(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    # The same run, longer: resumes.
    r = mkd("train", "train/tiny-mock", f"run.dir={run}", "train.steps=4")
    assert r.returncode == 0 and "resumed from" in r.stdout
    # Another model in the same directory: refused, nothing touched.
    before = (run / "metrics.jsonl").read_text()
    rc, _, err = mkd_in_process(capsys, "train", "train/tiny-mock", f"run.dir={run}", "train.steps=4",
                                "model.hidden_size=128")  # refused before anything starts
    assert rc == 2
    assert "holds a different run (model.hidden_size: 64 -> 128)" in err.strip().splitlines()[-1]
    assert (run / "metrics.jsonl").read_text() == before
    # --overwrite discards it and trains the new one from scratch.
    r = mkd("train", "train/tiny-mock", f"run.dir={run}", "train.steps=3", "model.hidden_size=128", "--overwrite")
    assert r.returncode == 0 and "resumed from" not in r.stdout
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def _trajectory(run) -> dict[int, float]:
    """step -> loss, the last record of each step (a resumed run logs the redone steps again)."""
    return {m["step"]: m["loss"] for m in read_metrics(run)}


def mkd_to_be_killed(log, *args, env=None) -> subprocess.Popen:
    """`mkd` in its own process group, output to a file: a SIGKILLed trainer can leave
    dist_checkpointing's spawned helper behind, and that orphan would hold a pipe open."""
    return subprocess.Popen([*MKD, *args], cwd=REPO, env=env or ENV,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def reap_group(proc: subprocess.Popen) -> int:
    rc = proc.wait(timeout=300)
    try:  # whatever the killed trainer left in its process group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return rc


@pytest.mark.slow
def test_sigkill_mid_save_or_mid_run_loses_nothing_and_resumes_exactly(tmp_path):
    args = ["train", "train/tiny-mock", "train.steps=12", "checkpoint.save_interval=3",
            "checkpoint.keep_last=2"]
    assert mkd(*args, f"run.dir={tmp_path / 'ref'}").returncode == 0
    ref = _trajectory(tmp_path / "ref")
    assert sorted(ref) == list(range(1, 13))

    # A real SIGKILL inside the save at step 6, after the shards are written, before the rename.
    run = tmp_path / "killed_in_save"
    ckpts = run / "checkpoints"
    log = tmp_path / "killed.log"
    rc = reap_group(mkd_to_be_killed(log, *args, f"run.dir={run}",
                                     env=env_with(MKD_INJECT_KILL_IN_SAVE="6:after_shards")))
    assert rc == -signal.SIGKILL, log.read_text()[-2000:]
    assert (ckpts / "step_0000006.partial").is_dir() and (ckpts / "latest").read_text() == "step_0000003"
    # Again at step 9, with the whole checkpoint written but not yet renamed into place.
    rc = reap_group(mkd_to_be_killed(log, *args, f"run.dir={run}",
                                     env=env_with(MKD_INJECT_KILL_IN_SAVE="9:before_rename")))
    assert rc == -signal.SIGKILL and "resumed from" in log.read_text(), log.read_text()[-2000:]
    assert (ckpts / "latest").read_text() == "step_0000006" and (ckpts / "step_0000009.partial").is_dir()
    # Resumed from step 6, then SIGKILLed from outside at whatever step it has reached (not at an
    # injected point) once it has redone two steps; resumed again, it ends where the reference did.
    metrics = run / "metrics.jsonl"
    logged = len(metrics.read_text().splitlines())
    log = tmp_path / "killed_mid_run.log"
    proc = mkd_to_be_killed(log, *args, f"run.dir={run}")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(metrics.read_text().splitlines()) >= logged + 2:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and anything it started
    proc.wait()
    assert f"resumed from {ckpts / 'step_0000006'}" in log.read_text(), log.read_text()[-2000:]
    killed_at = 6 + len(metrics.read_text().splitlines()[logged:])  # one line a step
    assert 8 <= killed_at < 12, ("the run finished before it could be killed", killed_at)
    r = mkd(*args, f"run.dir={run}")
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stdout[-2000:]
    assert not list(ckpts.glob("*.partial"))  # the dead saves are cleaned up
    got = _trajectory(run)
    assert sorted(got) == sorted(ref) and all(abs(got[s] - ref[s]) <= 1e-6 for s in ref), (killed_at, got, ref)


@pytest.mark.slow  # a whole training run
def test_preemption_warning_during_start_up_checkpoints_and_exits_for_requeue(tmp_path):
    """Slurm's SIGUSR1 can come while torch and megatron-core are still being imported (a
    requeued job starting late in its time slot): its default action would end the process
    with no checkpoint. The handler must be in place before torch loads."""
    run, log = tmp_path / "run", tmp_path / "train.log"
    proc = mkd_to_be_killed(log, "train", "train/tiny-mock", f"run.dir={run}", "train.steps=20")
    usr1 = 1 << (signal.SIGUSR1 - 1)
    deadline = time.monotonic() + 120
    while True:  # until the process catches SIGUSR1 (its SigCgt mask), then: is torch loaded?
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caught = int(next(s for s in status.splitlines() if s.startswith("SigCgt:")).split()[1], 16)
        if caught & usr1:
            break
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.002)
    proc.send_signal(signal.SIGUSR1)  # torch may be loading or loaded: the order is the next test's
    rc = reap_group(proc)
    text = log.read_text()
    assert rc == 75, text[-3000:]
    assert "preemption signal SIGUSR1 at step 1" in text and "exit 75" in text, text[-3000:]
    assert (run / "checkpoints" / "step_0000001").is_dir()


_STOP_AT_TORCH = """
import os, signal, sys
class StopAtTorch:  # the first import of torch: is the preemption handler already in place?
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("handler before torch:", signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None), flush=True)
            os._exit(0)
sys.meta_path.insert(0, StopAtTorch())
sys.argv = ["mkd", *sys.argv[1:]]
from megatron_kd.cli.main import main
main()
"""


def test_the_preemption_handler_is_installed_before_torch_is_imported(tmp_path):
    """The order the test above relies on, without timing: `mkd train` stopped at its first
    import of torch has its SIGUSR1 handler already."""
    out = subprocess.run([sys.executable, "-c", _STOP_AT_TORCH, "train", "train/tiny-mock",
                          f"run.dir={tmp_path / 'run'}"], cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert "handler before torch: True" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_sigterm_during_start_up_stops_at_once(tmp_path):
    """SIGTERM (scancel, a user's kill) while the run is still starting up: no step to finish,
    nothing new to checkpoint, so the process stops at once instead of after its start-up (which
    for a large model or dataset index takes minutes)."""
    run, log = tmp_path / "run", tmp_path / "train.log"
    proc = mkd_to_be_killed(log, "train", "train/tiny-mock", f"run.dir={run}", "train.steps=20")
    term = 1 << (signal.SIGTERM - 1)
    deadline = time.monotonic() + 120
    while True:  # the handler is in place (SigCgt), torch is still loading or the models are built
        status = Path(f"/proc/{proc.pid}/status").read_text()
        if int(next(s for s in status.splitlines() if s.startswith("SigCgt:")).split()[1], 16) & term:
            break
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.002)
    time.sleep(0.5)  # well inside start-up (imports, process group, models: seconds)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = reap_group(proc)
    text = log.read_text()
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert time.monotonic() - sent < 10, "SIGTERM during start-up was not acted on at once"
    assert "Traceback" not in text and not (run / "checkpoints").exists(), text[-3000:]
    assert not (run / "metrics.jsonl").exists()
