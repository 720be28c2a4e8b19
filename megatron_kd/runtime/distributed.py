"""Process-group start-up and shutdown for one process, torchrun, or srun.

The launcher is read from the environment, so the same command works under all three:
- torchrun: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
- srun: SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, MASTER_ADDR = first host of the job's
  node list (MASTER_PORT from the environment, else derived from the job id);
- nothing: a single process on a free local port.
gloo on CPU (with the CPU runtime layer), NCCL on GPU.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import os
import re
import signal
import socket
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_kd.config.schema import ParallelConfig
from megatron_kd.errors import ConfigError, SetupError


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "srun" or "single"


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm node list: 'gpu[01-03,07],login1' -> ['gpu01', 'gpu02', 'gpu03', 'gpu07', 'login1']."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            if hi:
                width = len(lo)
                hosts += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
            else:
                hosts.append(f"{prefix}{lo}{suffix}")
    return hosts


PORT_ATTEMPTS = 3  # a single process's rendezvous port lost to another process: this many tries


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detect_launch_env(environ: dict | None = None) -> LaunchEnv:
    """Who launched this process (torchrun's RANK/WORLD_SIZE, srun's SLURM_PROCID/NTASKS, or
    nobody); malformed launcher variables are a ConfigError naming the variable."""
    env = os.environ if environ is None else environ

    def num(name: str, default=None, low: int = 0, high: int | None = None) -> int:
        raw = env.get(name, default)
        try:
            value = int(raw)
        except (TypeError, ValueError):
            value = None
        if value is None or value < low or (high is not None and value > high):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise ConfigError(f"environment variable {name}={str(raw)[:40]!r} is not an integer {bound}; "
                              "unset it or let the launcher (torchrun, srun) set it")
        return value

    def port(default) -> int:
        return num("MASTER_PORT", default, low=1, high=65535)

    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = num("RANK"), num("WORLD_SIZE", low=1)
        if rank >= world:
            raise ConfigError(f"RANK={rank} is not below WORLD_SIZE={world}; unset both or launch with torchrun")
        return LaunchEnv(rank, world, num("LOCAL_RANK", 0), env.get("MASTER_ADDR", "127.0.0.1"),
                         port(29500), "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        try:
            addr = env.get("MASTER_ADDR") or expand_nodelist(nodes)[0]
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"the Slurm node list {nodes[:80]!r} (SLURM_STEP_NODELIST / SLURM_JOB_NODELIST) "
                              "is not one Slurm writes (e.g. 'gpu[01-03,07]'); unset it, or set MASTER_ADDR "
                              "to the first node") from exc
        job = num("SLURM_JOB_ID", env.get("SLURM_JOB_ID") or 0)
        master_port = port(env.get("MASTER_PORT") or 20000 + job % 20000)
        rank, world = num("SLURM_PROCID"), num("SLURM_NTASKS", low=1)
        if rank >= world:
            raise ConfigError(f"SLURM_PROCID={rank} is not below SLURM_NTASKS={world}; run under srun")
        return LaunchEnv(rank, world, num("SLURM_LOCALID", 0), addr, master_port, "srun")
    return LaunchEnv(0, 1, 0, "127.0.0.1", free_port(), "single")


def check_master_addr(launch: LaunchEnv) -> None:
    """MASTER_ADDR must name a host this machine can resolve: an unresolvable one otherwise
    stalls in the C++ rendezvous until its timeout, retrying the lookup."""
    try:
        socket.getaddrinfo(launch.master_addr, launch.master_port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        source = "MASTER_ADDR" if os.environ.get("MASTER_ADDR") else "the first host of the Slurm node list"
        raise ConfigError(f"the rendezvous host {launch.master_addr[:80]!r} ({source}) does not resolve "
                          f"({getattr(exc, 'strerror', None) or exc}); set MASTER_ADDR to a reachable host "
                          "name or address, or unset RANK / WORLD_SIZE for one process") from exc


def init_distributed(parallel: ParallelConfig, seed: int, launch: LaunchEnv | None = None,
                     timeout_s: int = 600) -> LaunchEnv:
    """Start the default process group and megatron-core's TP/PP/DP groups; seed the RNGs."""
    from megatron_kd.runtime import cpu_compat  # lazy: it patches megatron-core, loaded only to start

    launch = launch or detect_launch_env()
    on_cpu = cpu_compat.activate()  # first: it adapts megatron-core's import on CPU
    from megatron.core import parallel_state
    if not on_cpu:
        torch.cuda.set_device(launch.local_rank)
    if launch.world_size > 1:
        check_master_addr(launch)
    if launch.world_size > 1 and not (os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_JOB_ID")):
        # not started by torchrun or Slurm: say what this process waits for, and where from
        print(f"rank {launch.rank}: waiting up to {timeout_s} s for {launch.world_size} processes at "
              f"{launch.master_addr}:{launch.master_port} (RANK / WORLD_SIZE from the environment; unset "
              "them for a single process)", file=sys.stderr, flush=True)
    # The rendezvous blocks in C++, where a Python signal handler never runs: SIGTERM keeps its
    # default action meanwhile (nothing to save yet), so a stuck start-up ends at once.
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_DFL) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        launch = _init_process_group(launch, on_cpu, timeout_s)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp if parallel.vpp > 1 else None,
        expert_model_parallel_size=parallel.ep,
        expert_tensor_parallel_size=parallel.etp or parallel.tp,
    )
    seed_everything(seed)
    return launch


def _init_process_group(launch: LaunchEnv, on_cpu: bool, timeout_s: int) -> LaunchEnv:
    """The default process group; a timed-out rendezvous is one line naming what it waited for."""
    for attempt in range(PORT_ATTEMPTS):
        if dist.is_initialized():
            break
        try:
            dist.init_process_group(
                backend="gloo" if on_cpu else "nccl",
                # Under torchrun, env:// reuses the elastic agent's store (its port may be chosen
                # by the agent); srun and single processes rendezvous on MASTER_ADDR:MASTER_PORT.
                init_method="env://" if launch.launcher == "torchrun"
                else f"tcp://{launch.master_addr}:{launch.master_port}",
                rank=launch.rank,
                world_size=launch.world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        except (RuntimeError, OSError) as exc:
            if "timeout" in str(exc).lower() or "timed out" in str(exc).lower():
                raise SetupError(f"rank {launch.rank} waited {timeout_s} s for {launch.world_size} processes at "
                                 f"{launch.master_addr}:{launch.master_port} ({launch.launcher} variables) and "
                                 "they did not all come; unset RANK / WORLD_SIZE for one process, or start "
                                 "every rank (torchrun, srun); run.rendezvous_timeout_s sets the wait") from exc
            # A single process picks a free port and binds it a moment later: another process
            # may take it in between (EADDRINUSE). Only then, and only alone, try another port.
            taken = "address already in use" in str(exc).lower() or getattr(exc, "errno", None) == errno.EADDRINUSE
            if launch.launcher != "single" or not taken or attempt == PORT_ATTEMPTS - 1:
                raise
            launch = dataclasses.replace(launch, master_port=free_port())
    return launch


def seed_everything(seed: int) -> None:
    """Same seed on data-parallel replicas; megatron-core's tracker adds the TP-rank offset."""
    import random

    import numpy as np
    from megatron.core import parallel_state, tensor_parallel

    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed + 100 * pp_rank)
    np.random.seed(seed + 100 * pp_rank)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def shutdown(barrier: bool = True) -> None:
    """Destroy megatron-core's groups and the default group so nothing hangs at exit.

    `barrier=False` on error paths, where a peer may already be gone."""
    try:
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
    except ImportError:
        pass
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
