"""Preemption: SIGUSR1 (Slurm's warning before the time limit, `--signal=USR1@N`) and SIGTERM
(scancel, node drain) ask the run to checkpoint at the next step boundary and exit with
EXIT_PREEMPTED, which the sbatch script turns into `scontrol requeue`; the next start resumes."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("megatron_kd.train")

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again", i.e. requeue
_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_received: list[int] = []
_training = [False]  # set when the first step starts: from then on there is a step to finish


def _handler(signum, frame):  # noqa: ARG001 - signal handler signature
    _received.append(signum)
    if signum == signal.SIGTERM and not _training[0]:
        # Start-up (datasets, models, a teacher being loaded): no step to finish and nothing
        # new to checkpoint, so stop now instead of after minutes of start-up work. SIGUSR1
        # (the time-limit warning) stays deferred: the run checkpoints after its first step.
        raise SystemExit(128 + signum)


def check_start_up() -> None:
    """Stop now if SIGTERM came during start-up. The handler's SystemExit can be swallowed:
    megatron-core wraps optional imports in bare `except:` (zmq, msgpack, cuda bindings), and a
    signal that lands in one of them is recorded but not acted on. Called before the run writes
    anything and again as training starts."""
    if signal.SIGTERM in _received and not _training[0]:
        raise SystemExit(128 + signal.SIGTERM)


def terminated_in_start_up() -> bool:
    """SIGTERM came before training started: whatever failed after it is its consequence."""
    return signal.SIGTERM in _received and not _training[0]


def training_started() -> None:
    """From now on SIGTERM asks for a checkpoint at the next step boundary."""
    check_start_up()
    _training[0] = True


def install() -> None:
    """Catch the preemption signals (call as early as possible in the process). This module
    imports nothing heavy, so the handler is in place within a fraction of a second of the
    process starting: a warning that arrives while torch and megatron-core are still being
    imported (seconds) is kept, not fatal (SIGUSR1's default action ends the process)."""
    for sig in _SIGNALS:
        signal.signal(sig, _handler)


def requested() -> bool:
    """True on every rank once any rank received a preemption signal (one tiny all-reduce)."""
    import torch

    flag = torch.tensor([1 if _received else 0], dtype=torch.int32)
    if torch.cuda.is_available():
        flag = flag.cuda()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def signal_names() -> str:
    return ", ".join(signal.Signals(s).name for s in _received) or "(from another rank)"
