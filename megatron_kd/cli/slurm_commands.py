"""`mkd slurm submit`, and the job options `mkd sweep --slurm` shares."""

from __future__ import annotations

import argparse

from megatron_kd.errors import ConfigError


def _at_least(name: str, least: int, most: int | None = None):
    """An argparse type: an integer in [least, most] (checked while parsing: `mkd sweep --slurm`
    refuses a bad value before it writes any recipe)."""
    bound = f"from {least} to {most}" if most is not None else f">= {least}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a job needs --{name} {bound}, got {text!r}") from None
        if value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"a job needs --{name} {bound}, got {value}")
        return value
    return parse


def _slurm_time(text: str) -> str:
    from megatron_kd.slurm.submit import time_limit_seconds

    try:
        time_limit_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--time {text!r} ")) from None
    return text


def add_job_options(p) -> None:
    from megatron_kd.slurm.submit import MAX_SIGNAL_SECONDS

    p.add_argument("--nodes", type=_at_least("nodes", 1), default=1)
    p.add_argument("--gpus-per-node", type=_at_least("gpus-per-node", 0), default=8,
                   help="one task per GPU (0: CPU tasks)")
    p.add_argument("--ntasks-per-node", type=_at_least("ntasks-per-node", 1), default=None,
                   help="CPU jobs: tasks per node")
    p.add_argument("--time", type=_slurm_time, default="04:00:00",
                   help="time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--signal-seconds", type=_at_least("signal-seconds", 1, MAX_SIGNAL_SECONDS), default=300,
                   help="USR1 this many seconds before the time limit: checkpoint and requeue")
    p.add_argument("--cpus-per-task", type=_at_least("cpus-per-task", 1), default=None)


def add_slurm_parser(sub) -> None:
    p = sub.add_parser("slurm", help="submit training jobs to Slurm (srun launch, requeue on preemption)")
    ssub = p.add_subparsers(dest="slurm_command", metavar="SLURM_COMMAND", required=True)
    s = ssub.add_parser("submit", help="render the sbatch script for RECIPE and submit it")
    s.add_argument("recipe")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    add_job_options(s)
    s.add_argument("--job-name", default=None)
    s.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    s.set_defaults(func=cmd_submit)


def add_plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="per-GPU memory of a run (student + teacher) and a layout that fits")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--gpus", type=int, required=True, help="GPUs of the job (nodes x GPUs per node)")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory per GPU (H100: 80)")
    p.add_argument("--sweep-points", type=int, default=6,
                   help="KD runs sharing the teacher, for the cache's compute saving (the paper: 6 alphas)")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    from megatron_kd.config import load_config, validate
    from megatron_kd.config.validate import validate_layout
    from megatron_kd.distill.teacher import teacher_model
    from megatron_kd.slurm.plan import GiB, cache_lines, estimate, expert_lines, format_plan, pipeline_line, suggest

    if args.gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {args.gpus}")
    if args.sweep_points < 1:
        raise ConfigError(f"--sweep-points must be >= 1, got {args.sweep_points}")
    if not 0 < args.gpu_memory_gb < float("inf"):
        raise ConfigError(f"--gpu-memory-gb must be a positive number, got {args.gpu_memory_gb}")
    cfg = load_config(args.recipe, args.overrides)
    validate(cfg, args.gpus)
    teacher = teacher_model(cfg)
    if teacher is not None:  # the teacher is split over the same TP/PP/VPP layout
        validate_layout(teacher, cfg.parallel, key="the teacher's model")
    gpu = args.gpu_memory_gb * GiB
    plan = estimate(cfg, teacher, args.gpus)
    who = f"student {cfg.model.name}" + (f" + teacher {teacher.name}" if teacher else "")
    for line in format_plan(plan, gpu, f"{who} on {args.gpus} GPUs, {cfg.precision.dtype}"
                                       + (f"+fp8 ({cfg.precision.fp8})" if cfg.precision.fp8 else "")):
        print(line)
    for line in expert_lines(cfg, teacher):
        print(line)
    pipeline = pipeline_line(cfg, plan, teacher, args.gpus)
    if pipeline:
        print(pipeline)
    if teacher is not None:
        for line in cache_lines(cfg, teacher, args.sweep_points):
            print(line)
    if plan.total > gpu:
        print(f"warning: over the {args.gpu_memory_gb:.0f} GiB per GPU")
        better = suggest(cfg, teacher, args.gpus, gpu)
        if better is None:
            print("no TP x PP layout with the distributed optimizer fits; try train.recompute=full, "
                  "lower train.micro_batch_size, set kd.chunk_size, or use more GPUs")
        else:
            for line in format_plan(better, gpu, "suggested"):
                print(line)
            vpp = f" parallel.vpp={better.vpp}" if better.vpp != cfg.parallel.vpp else ""
            print(f"  overrides: parallel.tp={better.tp} parallel.pp={better.pp}{vpp} "
                  "parallel.distributed_optimizer=true")
        return 5
    return 0


def job_spec(args, recipe: str, overrides: list[str]):
    from megatron_kd.slurm.submit import JobSpec

    return JobSpec(recipe=recipe, overrides=list(overrides), nodes=args.nodes,
                   gpus_per_node=args.gpus_per_node, ntasks_per_node=args.ntasks_per_node,
                   time=args.time, partition=args.partition, account=args.account,
                   signal_seconds=args.signal_seconds, cpus_per_task=args.cpus_per_task,
                   job_name=getattr(args, "job_name", None))


def cmd_submit(args) -> int:
    from megatron_kd.slurm.submit import submit

    out = submit(job_spec(args, args.recipe, args.overrides), dry_run=args.dry_run)
    print(out if args.dry_run else f"submitted job {out}")
    return 0
