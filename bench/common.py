"""What the benchmarks share: timing (median after warm-up), peak memory, gloo/NCCL ranks, tables.

Peak memory on CPU is the process's resident-set high-water mark (VmHWM), reset before each
measurement through /proc/self/clear_refs, minus the resident set just before: the extra memory
one call needs on top of its inputs. On CUDA it is torch's allocator peak minus what was allocated.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MIB = 1 << 20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.extra_bytes`."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.extra_bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.extra_bytes = _status_kib("VmHWM") * 1024 - self.base
        return False


def measure(fn: Callable[[], None], device: str, repeats: int, warmup: int, group=None,
            before: Callable[[], None] | None = None) -> dict:
    """Median seconds of `fn` over `repeats` calls after `warmup` calls, and the largest peak
    extra memory seen; `before` runs outside the measurement (e.g. dropping the previous
    call's gradients, so they are not counted as already there); ranks of `group` start each
    call together."""
    times, peaks = [], []
    for i in range(warmup + repeats):
        if before is not None:
            before()
        gc.collect()
        if dist.is_initialized():
            dist.barrier(group=group)
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
        if i >= warmup:
            times.append(elapsed)
            peaks.append(mem.extra_bytes)
    # The slowest rank decides a TP step.
    t = torch.tensor([statistics.median(times), float(max(peaks))], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return {"seconds": t[0].item(), "peak_extra_mib": t[1].item() / MIB}


def _rank_main(rank: int, world: int, port: int, target: Callable, args, results):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    out = target(rank, world, args)
    if rank == 0:
        results.put(out)


def run_ranks(world: int, target: Callable, args) -> dict:
    """Run `target(rank, world, args)` on `world` processes (gloo rendezvous env set, no process
    group started) and return rank 0's result."""
    from megatron_kd.runtime.distributed import free_port

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_rank_main, args=(world, free_port(), target, args, results), nprocs=world,
                       join=True, start_method="spawn")
    return results.get()


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(r.get(key, "")) for key, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
