"""What the tests share: the environment their subprocesses run in, `mkd` as a user runs it (a
real subprocess), a run's metrics.jsonl, and what is built once per test session (a trained
teacher, the text corpus) for every module and xdist worker that needs it. Multi-rank test
bodies go through tests/distributed.py's run_distributed instead."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
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


def session_dir(tmp_path_factory) -> Path:
    """A directory every xdist worker of this pytest session sees: the parent of the worker's
    base temp dir under xdist (pytest-N/, shared by popen-gw0 and popen-gw1), the base temp dir
    without it (its parent is shared by every session: not there)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def config_key(*parts) -> str:
    """A short name for a configuration: what it was built from, hashed."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


@contextlib.contextmanager
def build_once(tmp_path_factory, name: str):
    """Yield (directory, built): `directory` is this session's one copy of `name`; `built` says
    whether an earlier holder finished it. The caller builds it when not built, and on a clean
    exit it is marked built. A file lock makes the other xdist worker wait for it instead of
    building its own; a build that failed is cleared and built again by the next holder."""
    root = session_dir(tmp_path_factory) / "built-once"
    root.mkdir(exist_ok=True)
    directory, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            built = done.exists()
            if not built and directory.exists():
                shutil.rmtree(directory)
            yield directory, built
            done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def trained_teacher(tmp_path_factory, recipe: str, *overrides: str) -> Path:
    """The run directory of `mkd train RECIPE OVERRIDES...`, trained once per test session and
    configuration (every module and xdist worker asking for the same one reads the same run).
    Read it, never write into it: it is shared."""
    with build_once(tmp_path_factory, "teacher-" + config_key(recipe, *overrides)) as (run_dir, built):
        if not built:
            mkd("train", recipe, *overrides, f"run.dir={run_dir}", timeout=600)
    return run_dir


def tree_digest(path: Path) -> str:
    """A SHA-256 of every file under `path` (names and bytes): equal digests, an untouched tree."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def copy_prefix(src: str, dst: Path) -> str:
    """A copy of a tokenized dataset prefix (.idx, .bin and .meta.json where present) at `dst`."""
    for ext in (".idx", ".bin", ".meta.json"):
        if Path(src + ext).exists():
            shutil.copy(src + ext, str(dst) + ext)
    return str(dst)


def auto_objective(mean: float | None):
    """A kd.auto KD objective (tiny-mock, ceiling 0.8) whose advantage trend stands at `mean`
    (None: no micro-batch seen yet): the state a checkpoint saves and a resume restores."""
    from megatron_kd.config import load_config
    from megatron_kd.distill.objective import KDObjective

    cfg = load_config("train/tiny-mock", ["kd.alpha=0.8", "kd.auto.enabled=true"])
    objective = KDObjective.from_config(cfg.kd, cfg.model.vocab_size)
    objective.trend.mean = mean
    return objective
