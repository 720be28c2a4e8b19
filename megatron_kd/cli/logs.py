"""Console logging for every mkd job: rank 0 speaks, other ranks only warn."""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Third-party start-up chatter that says nothing actionable on our supported set-ups.
_QUIET_WARNINGS = (
    r".*(Apex|Transformer Engine|TransformerEngine).* not installed.*",
    r".*Apex is not installed.*",
    r".*absl.logging is not installed.*",
    r".*fp8 argument in .* has been deprecated.*",
    r".*full scope is deprecated.*",
    r".*recommended to set the environment variable CUDA_DEVICE_MAX_CONNECTIONS.*",
    r".*MimoModelConfig is experimental.*",
    # torch.distributed.checkpoint, as megatron-core's dist_checkpointing drives it:
    r".*torch.distributed is disabled, unavailable or uninitialized.*",
    r".*argument order of load has been changed.*",
    r".*Please use DTensor instead and we are deprecating ShardedTensor.*",
)
# megatron-core's deprecation notices are said once per process tree by runtime/cpu_compat.py, on
# their own loggers (where they are raised), not dropped here.


class _CurrentStdout(logging.StreamHandler):
    """A handler on sys.stdout as it is when a record is emitted, not when the handler was made:
    where a caller swaps sys.stdout (pytest's capture, contextlib.redirect_stdout, an in-process
    `mkd`), the logs follow it, and a stream an earlier swap closed is never written to."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ / setStream assign it: always sys.stdout
        pass


def setup_logging(level: str = "info", rank: int | None = None) -> None:
    if rank is None:  # a malformed RANK is the launch check's to report (one line), not the logger's
        raw = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
        rank = int(raw) if raw.strip().isdigit() else 0
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    numeric = getattr(logging, level.upper()) if rank == 0 else logging.WARNING
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = _CurrentStdout()
    fmt = "%(asctime)s %(message)s" if rank == 0 else f"%(asctime)s [rank {rank}] %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("megatron_kd").setLevel(numeric)
    logging.getLogger("megatron").setLevel(logging.WARNING if rank == 0 else logging.ERROR)
