"""What the tests share: the environment their subprocesses run in, `mkd` as a user runs it (a
real subprocess) and a run's metrics.jsonl. Multi-rank test bodies go through
tests/distributed.py's run_distributed instead."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.distributed import REPO

# One thread per process (the machine's 2 cores are shared), the checkout importable, and
# Hugging Face kept offline: no test reaches the network.
ENV: dict[str, str] = dict(
    os.environ, OMP_NUM_THREADS="1",
    PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

# The `mkd` command: the module, so that it runs from the checkout under the test interpreter.
MKD = [sys.executable, "-m", "megatron_kd"]


def env_with(**extra: str) -> dict[str, str]:
    """ENV with some variables added or replaced."""
    return {**ENV, **extra}


def mkd(*args, env: dict[str, str] | None = None, cwd: Path | str = REPO, timeout: float = 300,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run `mkd ARGS...` in a subprocess (text output captured) and return the finished process.

    check=True (the default) asserts exit code 0, failing with the end of its output; pass
    check=False when the test looks at the exit code itself. env replaces ENV as a whole (build
    it with env_with)."""
    r = subprocess.run([*MKD, *map(str, args)], cwd=cwd, env=ENV if env is None else env,
                       capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"mkd exited {r.returncode}\n" + r.stdout[-4000:] + r.stderr[-4000:]
    return r


def mkd_in_process(capsys, *args) -> tuple[int, str, str]:
    """`mkd ARGS...` run in this process: (exit code, stdout, stderr). For what fails or ends
    before any process group starts (refusals, --verify, reports): no interpreter start and no
    megatron-core import per call (~5 s each as a subprocess)."""
    from megatron_kd.cli.main import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def read_metrics(run_dir: Path | str) -> list[dict]:
    """A run's metrics.jsonl: one dict per logged step, in the order written."""
    with open(Path(run_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A real file system of `size` (a tmpfs mounted at `path`) that fills up; the test is
    skipped where mounting needs a root this process is not (the suite runs as root here and
    in CI)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        import pytest

        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
