"""A single process's rendezvous port taken by another process between picking and binding it
(EADDRINUSE) is retried on another free port, not a traceback; a real occupied port."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.distributed import REPO
from tests.helpers import ENV

SCRIPT = textwrap.dedent("""
    import socket
    from megatron_kd.config.schema import ParallelConfig
    from megatron_kd.runtime.distributed import LaunchEnv, init_distributed, shutdown
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    launch = init_distributed(ParallelConfig(), 0, LaunchEnv(0, 1, 0, "127.0.0.1", port, "single"))
    print("ports", port, launch.master_port)
    shutdown()
""")


def test_taken_single_process_port_is_retried():
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("ports"))
    taken, used = map(int, line.split()[1:])
    assert used != taken
