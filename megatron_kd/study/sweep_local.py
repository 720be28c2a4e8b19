"""`mkd sweep --local`: a sweep's points run here as subprocess jobs, N at a time — the points that
train a teacher of the sweep first, then each cached teacher's cache job (once, reused when
complete), then the rest; a finished run is skipped, a partial one resumes, so a sweep re-run with
points added (an `auto` α, another seed) trains only the new ones."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from megatron_kd.checkpoint.refs import latest_checkpoint, read_state
from megatron_kd.console import NOTICES_SHOWN_ENV
from megatron_kd.errors import ConfigError
from megatron_kd.study.jobs import Job, argument_path, run_jobs
from megatron_kd.study.sweep_grid import expand, teacher_points
from megatron_kd.study.sweep_progress import JobsProgress, following, say
from megatron_kd.study.sweep_recipes import cache_recipe, write_recipes


def finished(run_dir: Path) -> bool:
    latest = latest_checkpoint(run_dir / "checkpoints")
    return latest is not None and read_state(latest)["kind"] == "final"


def build_caches(spec: dict, pending: list[tuple], nproc: int, jobs: int = 1) -> None:
    """Each cached teacher's cache, once, before the points that read it (the teacher runs once
    for all of them), `jobs` cache jobs at a time; a complete cache is reused."""
    by_cache: dict[str, list] = {}
    for point, recipe, _ in pending:
        if point.meta.get("teacher_cache"):
            by_cache.setdefault(point.meta["teacher_cache"], []).append((point, recipe))
    todo = []
    for cache, users in by_cache.items():
        point = users[0][0]
        teacher = point.meta["teacher"]
        if (Path(cache) / "COMPLETE").is_file():
            say(f"[sweep] teacher {teacher}: cache {cache} complete, reused by {len(users)} points")
            continue
        cmd = [sys.executable, "-m", "megatron_kd", "teacher-cache", argument_path(cache_recipe(spec, cache)),
               "--out", argument_path(cache), *point.meta["cache_args"].split()]
        cmd += ["--nproc", str(nproc)] if nproc > 1 else []
        log = Path(f"{cache}.log")  # beside the cache: caches/NAME.log

        def done(code: int, text: str, teacher=teacher, log=log) -> None:
            last = (text.strip().splitlines() or ["(no output)"])[-1]
            if code != 0:
                raise ConfigError(f"the teacher cache job for {teacher} failed: {last}; log: {log}")
            say(f"[sweep] {last}")

        todo.append((f"cache {Path(cache).name}",
                     Job(cmd, log, done, start=f"[sweep] teacher {teacher}: one teacher pass into {cache} for "
                                               f"{len(users)} points")))
    run_followed("teacher caches", todo, jobs, done_before=len(by_cache) - len(todo), total=len(by_cache))


def run_followed(what: str, named: list[tuple[str, Job]], lanes: int, done_before: int = 0,
                 total: int | None = None) -> None:
    """study/jobs.run_jobs, with a progress line every PROGRESS_EVERY_S while no job ends
    (study/sweep_progress.py): the jobs write only to their logs."""
    if not named:
        return
    progress = JobsProgress(what, [(name, job.log) for name, job in named], lanes, done_before, total)
    for name, job in named:
        def done(code: int, text: str, then=job.done, name=name) -> None:
            then(code, text)  # prints the job's own line, or raises
            progress.finished(name)

        job.done = done
    # The sweep and its jobs are one process tree: megatron-core's deprecation notices, which each
    # job would write into its log, are not said (runtime/cpu_compat.py).
    shown = os.environ.get(NOTICES_SHOWN_ENV)
    os.environ[NOTICES_SHOWN_ENV] = "all"
    try:
        with following(progress):
            run_jobs([job for _, job in named], lanes)
    finally:
        if shown is None:
            os.environ.pop(NOTICES_SHOWN_ENV, None)
        else:
            os.environ[NOTICES_SHOWN_ENV] = shown


def run_local(spec: dict, nproc: int = 1, jobs: int = 1, only: list[str] | None = None) -> list[str]:
    """Run every point here; finished runs are skipped, partial ones resume. `jobs` points run
    at the same time (each with `nproc` processes), e.g. one per core for CPU-sized models.
    Points that train a teacher of the sweep run first, then the caches, then the rest."""
    pending, done_names = [], set()
    for point, recipe in write_recipes(spec, only):
        run_dir = Path(spec["out"]) / "runs" / point.name
        if finished(run_dir):
            say(f"[sweep] {point.name}: finished, skipped")
            done_names.add(point.name)
        else:
            pending.append((point, recipe, run_dir))
    trains = teacher_points(spec, expand(spec))
    first = set(trains.values())
    for point, _, _ in pending:
        maker = trains.get(point.meta.get("teacher"))
        if maker and maker not in done_names and not any(p.name == maker for p, _, _ in pending) \
                and not finished(Path(spec["out"]) / "runs" / maker):
            raise ConfigError(f"sweep point {point.name} reads teacher {point.meta['teacher']}, which sweep point "
                              f"{maker} trains and has not run; add it to --only (or run the whole sweep)")
    ran: list[str] = []
    total = len(pending) + len(done_names)
    teachers_first = [x for x in pending if x[0].name in first]
    run_followed("runs", _train_jobs(teachers_first, nproc, ran), jobs, len(done_names), total)
    rest = [x for x in pending if x[0].name not in first]
    build_caches(spec, rest, nproc, jobs)
    run_followed("runs", _train_jobs(rest, nproc, ran), jobs, len(done_names) + len(ran), total)
    return ran


def _train_jobs(pending: list[tuple], nproc: int, ran: list[str]) -> list[tuple[str, Job]]:
    todo = []
    for point, recipe, run_dir in pending:
        cmd = [sys.executable, "-m", "megatron_kd", "train", argument_path(recipe)]
        cmd += ["--nproc", str(nproc)] if nproc > 1 else []

        def done(code: int, text: str, point=point, run_dir=run_dir) -> None:
            if code != 0:
                last = (text.strip().splitlines() or ["failed"])[-1]
                raise ConfigError(f"sweep point {point.name} failed ({last}); log: {run_dir / 'train.log'}")
            ends = [line for line in text.splitlines() if line.startswith(("done:", "already complete:"))]
            say(f"[sweep] {point.name}: {ends[-1] if ends else 'finished'}")
            ran.append(point.name)

        todo.append((point.name, Job(cmd, run_dir / "train.log", done, start=f"[sweep] {point.name}: training")))
    return todo
