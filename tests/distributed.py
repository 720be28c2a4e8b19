"""The one helper that runs a test body on N gloo processes.

`run_distributed("tests.workers.parity:main", nprocs, tmp_path, **kwargs)` starts N
`python -m tests.distributed` processes with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set
(the torchrun contract), calls the named function on each with (workdir=..., **kwargs) and returns each rank's
JSON-serialisable result. A failing rank fails the test with its output; a hang is killed.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_distributed(target: str, nprocs: int, workdir: Path, timeout: float = 300, **kwargs) -> list:
    from megatron_kd.runtime.distributed import free_port

    port = free_port()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(nprocs):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        out = workdir / f"rank{rank}.json"
        log = open(workdir / f"rank{rank}.log", "w")
        cmd = [sys.executable, "-m", "tests.distributed", target,
               json.dumps({"workdir": str(workdir), **kwargs}), str(out)]
        procs.append((subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for rank, (p, log) in enumerate(procs):
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q, _ in procs:
                q.kill()
            failed.append(f"rank {rank} timed out after {timeout}s")
        log.close()
        if p.returncode not in (0, None):
            failed.append(f"rank {rank} exited {p.returncode}")
    if failed:
        logs = "\n".join(f"--- rank {r} ---\n" + (workdir / f"rank{r}.log").read_text()[-6000:]
                         for r in range(nprocs))
        raise AssertionError("; ".join(failed) + "\n" + logs)
    return [json.loads((workdir / f"rank{r}.json").read_text()) for r in range(nprocs)]


def _main() -> None:
    target, kwargs, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    module, _, func = target.partition(":")
    result = getattr(importlib.import_module(module), func)(**kwargs)
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    _main()
