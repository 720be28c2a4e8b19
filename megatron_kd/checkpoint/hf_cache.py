"""A Hugging Face teacher named directly in a KD recipe is converted once and cached."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from megatron_kd.errors import ConfigError

DONE = "CONVERTED"
FAILED_SUFFIX = ".failed"


def cache_dir_for(hf_dir: Path) -> Path:
    """$MKD_CACHE (default ~/.cache/megatron_kd)/hf/<name>-<hash of path, config and weights>."""
    root = Path(os.environ.get("MKD_CACHE", Path.home() / ".cache" / "megatron_kd")) / "hf"
    h = hashlib.sha256(str(hf_dir.resolve()).encode())
    for f in sorted(hf_dir.glob("*.json")) + sorted(hf_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return root / f"{hf_dir.name}-{h.hexdigest()[:12]}"


def ensure_converted(hf_dir: Path, timeout_s: float = 3600) -> Path:
    """The cached megatron_kd checkpoint of `hf_dir`, converting it first if needed. Rank 0 (or
    a single process) converts in a clean subprocess; other ranks wait for it, at most
    `timeout_s`, and stop at once when rank 0 reports that the conversion failed."""
    out = cache_dir_for(hf_dir)
    if (out / DONE).is_file():
        return out
    failed = out.with_name(out.name + FAILED_SUFFIX)  # rank 0's error line, for the waiting ranks
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    if rank == 0:
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        failed.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                "MASTER_ADDR", "MASTER_PORT")}
        r = subprocess.run([sys.executable, "-m", "megatron_kd", "convert", "hf-to-mcore",
                            str(hf_dir), str(tmp)], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["conversion failed"])[-1]
            message = f"converting the Hugging Face teacher {hf_dir} failed: {last}"
            failed.write_text(message)
            raise ConfigError(message)
        (tmp / DONE).write_text(str(hf_dir.resolve()))
        tmp.rename(out)
        return out
    print(f"rank {rank}: waiting up to {timeout_s:.0f} s for rank 0 to convert {hf_dir} into {out}",
          file=sys.stderr, flush=True)
    return wait_for_rank0(out, failed, timeout_s,
                          f"waited {timeout_s:.0f} s for rank 0 to convert {hf_dir} into {out}, and it did not finish; "
                          f"convert it once beforehand (`mkd convert hf-to-mcore {hf_dir} DIR`) and give DIR as the "
                          "teacher")


def wait_for_rank0(out: Path, failed: Path, timeout_s: float, timed_out: str) -> Path:
    """The other ranks of a launch wait for rank 0's conversion into `out` (its DONE file), and
    fail with rank 0's message (`failed`, written since they started waiting) or `timed_out`."""
    deadline = time.time() + timeout_s
    while not (out / DONE).is_file():
        if failed.is_file() and failed.stat().st_mtime >= deadline - timeout_s - 60:
            raise ConfigError(f"rank 0 reported: {failed.read_text()[:500]}")
        if time.time() > deadline:
            raise ConfigError(timed_out)
        time.sleep(2)
    return out
