"""`mkd sweep --slurm`: every unfinished point of a sweep as an sbatch job, each cached teacher's
cache job (once) before the points that read it, and the points that train a teacher of the
sweep before everything that reads that teacher.

Everything is checked before the first `sbatch`: the job options, every point's resolved config
at the job's world size (with the streamed cache's wait), and then every job's script is
rendered. A bad value is refused in one line with nothing submitted, so a corrected re-run never
submits a second copy of jobs that went out before the refusal."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from megatron_kd.config import validate
from megatron_kd.config.overrides import override
from megatron_kd.errors import ConfigError
from megatron_kd.slurm import submit as slurm  # looked up at call time: tests stand in for sbatch
from megatron_kd.slurm.submit import JobSpec, check_job, render
from megatron_kd.study.sweep_grid import expand, select, teacher_points
from megatron_kd.study.sweep_local import finished
from megatron_kd.study.sweep_recipes import cache_recipe, resolve_point, write_recipes


@dataclass
class PlannedJob:
    """One job to submit: `after` names the planned job it waits for (its id is known only once
    that job is submitted)."""

    key: str  # "point NAME" or "cache DIR"
    job: JobSpec
    after: str | None
    label: str  # what the submission line says


def check_sweep_jobs(spec: dict, template: JobSpec, only: list[str] | None, stream: float | None) -> None:
    """The job options and every selected point's config at the job's world size, before any
    recipe is written (write_recipes checks the configs alone, without the world size)."""
    check_job(template)
    tasks = template.ntasks_per_node or template.gpus_per_node
    if tasks < 1:
        raise ConfigError("a job needs --gpus-per-node >= 1 (or --ntasks-per-node for CPU tasks)")
    for point in select(expand(spec), only):
        cfg = resolve_point(spec, point)
        if stream and cfg.teacher.cache:
            cfg = copy.deepcopy(cfg)
            cfg.teacher.cache_wait_s = stream
        validate(cfg, template.nodes * tasks)


def plan_sweep_jobs(spec: dict, template: JobSpec, only: list[str] | None,
                    stream: float | None) -> list[PlannedJob]:
    """The jobs of the unfinished points (recipes written), in submission order."""
    trains = teacher_points(spec, expand(spec))  # teachers that points of this sweep train
    written = write_recipes(spec, only)
    written.sort(key=lambda pr: pr[0].name not in set(trains.values()))  # those points first
    runs = Path(spec["out"]) / "runs"
    pending = {p.name for p, _ in written if not finished(runs / p.name)}
    for point, _ in written:
        maker = trains.get(point.meta.get("teacher"))
        if point.name in pending and maker and maker not in pending and not finished(runs / maker):
            raise ConfigError(f"sweep point {point.name} reads teacher {point.meta['teacher']}, which sweep "
                              f"point {maker} trains and has not finished; add it to --only (or submit the "
                              "whole sweep) so the jobs can wait for it")
    planned: list[PlannedJob] = []
    keys: set[str] = set()
    for point, recipe in written:
        if point.name not in pending:
            print(f"[sweep] {point.name}: finished, skipped")
            continue
        maker = trains.get(point.meta.get("teacher"))
        after = f"point {maker}" if maker and f"point {maker}" in keys else None
        job = _job(template, str(recipe))
        cache = point.meta.get("teacher_cache")
        if cache and not (Path(cache) / "COMPLETE").is_file():
            if f"cache {cache}" not in keys:
                cj = _job(template, str(cache_recipe(spec, cache)))
                cj.command, cj.job_name = "teacher-cache", f"mkd-cache-{Path(cache).name}"
                cj.command_args = [f"--out={cache}", *point.meta["cache_args"].split()]
                planned.append(PlannedJob(f"cache {cache}", cj, after,
                                          f"teacher {point.meta['teacher']}: cache job {{id}} -> {cache}"))
                keys.add(f"cache {cache}")
            after = f"cache {cache}"
            if stream:  # beside the cache job, reading its shards as they are written
                job.dependency_kind = "after"
                job.overrides.append(override("teacher.cache_wait_s", stream))
        planned.append(PlannedJob(f"point {point.name}", job, after, f"{point.name}: submitted job {{id}}"))
        keys.add(f"point {point.name}")
    return planned


def _job(template: JobSpec, recipe: str) -> JobSpec:
    job = copy.deepcopy(template)
    job.recipe = recipe
    return job


def submit_sweep(spec: dict, template: JobSpec, only: list[str] | None, stream: float | None) -> None:
    """Check, plan and render every job, then submit them in order, each after the one it waits for."""
    slurm.require_sbatch()  # before writing anything
    check_sweep_jobs(spec, template, only, stream)
    planned = plan_sweep_jobs(spec, template, only, stream)
    for p in planned:
        render(p.job)  # the whole script, before the first sbatch (dependencies are filled in below)
    ids: dict[str, str] = {}
    for p in planned:
        p.job.dependency = ids.get(p.after) if p.after else None
        ids[p.key] = slurm.submit(p.job)
        line = f"[sweep] {p.label.format(id=ids[p.key])}"
        if p.key.startswith("point") and p.job.dependency:
            dep, started = p.job.dependency, p.job.dependency_kind == "after"
            line += f" (once cache job {dep} has started)" if started else f" (after job {dep})"
        print(line)
