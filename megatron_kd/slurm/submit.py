"""Render and submit sbatch jobs: srun launch (one task per GPU, no torchrun), NCCL / Transformer
Engine environment, a warning signal before the time limit, and self-requeue on preemption.

Every user-provided string is shell-quoted (shlex.quote) in the script, and sbatch is called
with an argument list: nothing reaches a shell unquoted.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from megatron_kd.config import load_config, validate
from megatron_kd.config.loader import resolve_recipe_path
from megatron_kd.errors import ConfigError, SetupError
from megatron_kd.files import write_text_atomic
from megatron_kd.runtime.preemption import EXIT_PREEMPTED

REPO = Path(__file__).resolve().parents[2]

# megatron-core / NCCL / TE settings for H100 nodes (8 GPUs, NVLink + InfiniBand).
GPU_ENV = {
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",  # TP comm/compute overlap ordering
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "NCCL_NVLS_ENABLE": "0",
    "NCCL_IB_TIMEOUT": "19",
    "NVTE_FWD_LAYERNORM_SM_MARGIN": "16",
    "NVTE_BWD_LAYERNORM_SM_MARGIN": "16",
    "OMP_NUM_THREADS": "1",
}
FP8_ENV = {"NVTE_FP8_DPA_BWD": "1", "NVTE_FLASH_ATTN": "1", "NVTE_FUSED_ATTN": "1"}


@dataclass
class JobSpec:
    recipe: str
    overrides: list[str] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int = 8  # 0 = CPU tasks (gloo), with ntasks_per_node tasks
    ntasks_per_node: int | None = None
    time: str = "04:00:00"
    partition: str | None = None
    account: str | None = None
    signal_seconds: int = 300  # USR1 this long before the time limit: checkpoint + requeue
    job_name: str | None = None
    cpus_per_task: int | None = None
    extra_sbatch: list[str] = field(default_factory=list)
    command: str = "train"  # the mkd command the job runs (train, or teacher-cache)
    command_args: list[str] = field(default_factory=list)  # its options, e.g. ["--out", DIR]
    dependency: str | None = None  # a job id this one starts after
    dependency_kind: str = "afterok"  # after it succeeded; "after": once it has started (a streamed cache)


def _check_value(name: str, value: str) -> str:
    """A value that goes into a `#SBATCH` line or a comment: one line, no control characters
    (a newline would end the line and start a shell command). Quoting is the caller's."""
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ConfigError(f"--{name} must be one line without control characters, got {value!r}")
    return value


# Slurm's time formats (sbatch --time): MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_TIME = re.compile(r"(?:(?P<d>\d+)-(?P<dh>\d{1,2})(?::(?P<dm>\d{1,2})(?::(?P<ds>\d{1,2}))?)?"
                   r"|(?P<h>\d+):(?P<hm>\d{1,2}):(?P<hs>\d{1,2})|(?P<m>\d+)(?::(?P<ms>\d{1,2}))?)")
UNLIMITED = ("unlimited", "infinite")
MAX_SIGNAL_SECONDS = 65535  # sbatch --signal's sig_time is 16 bits
TIME_FORMS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED, e.g. 04:00:00 or 2-00:00:00"


def time_limit_seconds(value: str) -> float:
    """Seconds of a Slurm time limit (inf for UNLIMITED/INFINITE or 0); ValueError, with the
    accepted forms, for anything else."""
    text = str(value).strip()
    if text.lower() in UNLIMITED:
        return float("inf")
    m = _TIME.fullmatch(text)
    if m is None:
        raise ValueError(f"--time {value!r} is not a Slurm time limit; write {TIME_FORMS}")
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if any(g.get(k, 0) > 59 for k in ("dm", "ds", "hm", "hs", "ms")) or g.get("dh", 0) > 23:
        raise ValueError(f"--time {value!r} has minutes or seconds above 59 (or hours above 23 after a "
                         f"day count); write {TIME_FORMS}")
    seconds = (g.get("d", 0) * 24 + g.get("dh", 0) + g.get("h", 0)) * 3600 \
        + (g.get("dm", 0) + g.get("hm", 0) + g.get("m", 0)) * 60 + g.get("ds", 0) + g.get("hs", 0) + g.get("ms", 0)
    return float("inf") if seconds == 0 else float(seconds)  # Slurm: a limit of 0 is no limit


def check_job(spec: JobSpec) -> None:
    """The job's counts and times are values Slurm accepts and that make sense (one line each,
    before anything is rendered or written)."""
    def count(name: str, value, least: int) -> None:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise ConfigError(f"--{name} must be an integer >= {least}, got {value!r}")

    count("nodes", spec.nodes, 1)
    count("gpus-per-node", spec.gpus_per_node, 0)
    count("ntasks-per-node", spec.ntasks_per_node, 1)
    count("cpus-per-task", spec.cpus_per_task, 1)
    count("signal-seconds", spec.signal_seconds, 1)
    if spec.signal_seconds > MAX_SIGNAL_SECONDS:
        raise ConfigError(f"--signal-seconds must be at most {MAX_SIGNAL_SECONDS} (Slurm's limit), got "
                          f"{spec.signal_seconds}")
    try:
        limit = time_limit_seconds(_check_value("time", spec.time))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if spec.signal_seconds >= limit:
        raise ConfigError(f"--signal-seconds {spec.signal_seconds} is not below the --time limit {spec.time} "
                          f"({limit:g} s): the checkpoint signal would come at the start; lower it or raise "
                          "--time")


def _output_pattern(run_dir: Path) -> str:
    return _check_value("run.dir", str(run_dir / "slurm").replace("%", "%%")) + "/slurm-%j.out"


def render(spec: JobSpec) -> tuple[str, Path]:
    """(script text, run dir). The recipe is validated for the job's world size first."""
    check_job(spec)
    recipe = resolve_recipe_path(spec.recipe)
    tasks_per_node = spec.ntasks_per_node or spec.gpus_per_node
    if tasks_per_node < 1 or spec.nodes < 1:
        raise ConfigError("a job needs --nodes >= 1 and --gpus-per-node >= 1 (or --ntasks-per-node)")
    world = spec.nodes * tasks_per_node
    cfg = load_config(recipe, spec.overrides)
    validate(cfg, world)
    run_dir = Path(cfg.run.dir).resolve() if Path(cfg.run.dir).is_absolute() else (Path.cwd() / cfg.run.dir)
    name = _check_value("job-name", spec.job_name or f"mkd-{cfg.run.name}")
    q = shlex.quote
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={q(name)}",
             f"#SBATCH --nodes={spec.nodes}",
             f"#SBATCH --ntasks-per-node={tasks_per_node}"]
    if spec.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={spec.gpus_per_node}")
    if spec.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={spec.cpus_per_task}")
    lines.append(f"#SBATCH --time={q(_check_value('time', spec.time))}")
    for opt, val in (("partition", spec.partition), ("account", spec.account)):
        if val:
            lines.append(f"#SBATCH --{opt}={q(_check_value(opt, val))}")
    lines += [f"#SBATCH --signal=USR1@{int(spec.signal_seconds)}",
              "#SBATCH --requeue",
              "#SBATCH --open-mode=append",
              # sbatch expands %-patterns in the path: a literal % in run.dir is written %%
              f"#SBATCH --output={q(_output_pattern(run_dir))}"]
    lines += [f"#SBATCH {_check_value('sbatch', x)}" for x in spec.extra_sbatch]
    if spec.dependency:
        if not spec.dependency.isdigit():
            raise ConfigError(f"a job dependency must be a job id, got {spec.dependency!r}")
        if spec.dependency_kind not in ("afterok", "after"):
            raise ConfigError(f"a job dependency kind is afterok or after, got {spec.dependency_kind!r}")
        lines.append(f"#SBATCH --dependency={spec.dependency_kind}:{spec.dependency}")
    prec = cfg.precision
    lines += ["", f"# recipe: {_check_value('recipe', str(recipe))}",
              f"# run dir: {_check_value('run.dir', str(run_dir))}",
              f"# layout: tp={cfg.parallel.tp} pp={cfg.parallel.pp} world={world}",
              f"# precision: {prec.dtype}" + (
                  f", fp8={prec.fp8} recipe={prec.fp8_recipe} margin={prec.fp8_margin} "
                  f"amax_history={prec.fp8_amax_history_len} amax_algo={prec.fp8_amax_compute_algo}"
                  if prec.fp8 else ", no fp8"),
              "set -uo pipefail", f"cd {q(str(REPO))}"]
    env = dict(GPU_ENV) if spec.gpus_per_node else {"OMP_NUM_THREADS": "1"}
    if prec.fp8:
        env.update(FP8_ENV)
    lines += [f"export {k}={q(v)}" for k, v in env.items()]
    lines += ['export MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"',
              'echo "[mkd] job $SLURM_JOB_ID start (restart count ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"']
    if spec.command not in ("train", "teacher-cache"):
        raise ConfigError(f"a job runs `mkd train` or `mkd teacher-cache`, not {spec.command!r}")
    cmd = [sys.executable, "-m", "megatron_kd", spec.command, str(recipe), *spec.overrides, *spec.command_args]
    lines += [f"srun --kill-on-bad-exit=1 {' '.join(q(c) for c in cmd)}",
              "rc=$?",
              f"if [ \"$rc\" -eq {EXIT_PREEMPTED} ]; then",
              '    echo "[mkd] preempted: checkpoint saved, requeueing job $SLURM_JOB_ID"',
              '    scontrol requeue "$SLURM_JOB_ID"',
              "    exit 0",
              "fi",
              'echo "[mkd] job $SLURM_JOB_ID finished with exit code $rc"',
              'exit "$rc"', ""]
    return "\n".join(lines), run_dir


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise SetupError("Slurm's sbatch is not on PATH; run on a Slurm login node, or use "
                         "`mkd train` / `mkd sweep --local` on this machine")


def submit(spec: JobSpec, dry_run: bool = False) -> str:
    """Write RUN_DIR/slurm/job.sbatch (job-<command>.sbatch for a job other than `mkd train`, such
    as a sweep's cache job sharing a point's run directory) and submit it; returns the job id (or
    the script)."""
    script, run_dir = render(spec)
    if dry_run:
        return script
    require_sbatch()
    out = run_dir / "slurm"
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("job.sbatch" if spec.command == "train" else f"job-{spec.command}.sbatch")
    write_text_atomic(path, script)
    r = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        why = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        raise SetupError(f"sbatch refused the job: {why}")
    return r.stdout.strip().split(";")[0]
