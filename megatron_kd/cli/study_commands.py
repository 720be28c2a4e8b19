"""`mkd sweep`, `mkd report`, `mkd analyze`."""

from __future__ import annotations

import math
from pathlib import Path

MAX_EQUIVALENCE = 10.0  # nats: claim 2's margin; a margin past any loss gap makes every claim hold


def add_study_parsers(sub) -> None:
    p = sub.add_parser("sweep", help="expand a sweep grid into recipes; --local runs them all")
    p.add_argument("sweep", help="sweep YAML (e.g. recipes/sweeps/cpu-mini.yaml)")
    p.add_argument("--local", action="store_true", help="run the points here, one after another "
                   "(finished runs are skipped, partial ones resume), then write the report")
    p.add_argument("--nproc", type=int, default=1, help="processes per local run")
    p.add_argument("--jobs", type=int, default=1, help="local runs at the same time")
    p.add_argument("--slurm", action="store_true", help="submit every unfinished point with sbatch")
    p.add_argument("--no-power-check", action="store_true",
                   help="launch even when a test the sweep's `power.require` names cannot reach its power")
    p.add_argument("--stream", type=float, default=None, metavar="SECONDS",
                   help="with --slurm: each point starts once its teacher's cache job has started (not after "
                        "it ends) and reads the cache as it is written, waiting up to SECONDS for each shard "
                        "(teacher.cache_wait_s)")
    p.add_argument("--only", action="append", metavar="GLOB", help="only the points whose names "
                   "match (repeatable), e.g. --only '*baseline*'; with --local no report is written")
    from megatron_kd.cli.slurm_commands import add_job_options

    add_job_options(p)
    p.set_defaults(func=cmd_sweep)

    r = sub.add_parser("report", help="paired gains, claims as tests, best alpha and plots of a sweep directory",
                       description="Read a sweep directory's finished runs and write report.md, report.json "
                                   "(each point's paired gain and interval, each claim's verdict), report.csv "
                                   "and the figures beside them; print a one-screen summary (the headline, "
                                   "each claim's verdict, the compute answer, the files written).")
    r.add_argument("sweep_dir", nargs="?", help="a sweep's `out` directory (or give --table)")
    r.add_argument("--table", metavar="FILE.csv",
                   help="report from a results table instead, one row per run: run, student, student_params, "
                        "student_tokens, teacher (empty: baseline), teacher_params, teacher_tokens, alpha, "
                        "alpha_schedule, seed, data_seed, val/<set>..., teacher_val/<set>...; optional flops, "
                        "teacher_pretrain_flops, teacher_pass_flops, teacher_pass_shared_by, temperature, kind, top_k, "
                        "teacher_model, student_nonembedding_params, teacher_nonembedding_params, auto_ceiling "
                        "(alpha `auto`: a kd.auto run, its kd.alpha there, default 1) (a sweep's report.csv is "
                        "this table; missing FLOPs are estimated as 6ND / 2ND)")
    r.add_argument("--out", metavar="DIR", help="with --table: where the report goes (default FILE_report/)")
    r.add_argument("--level", type=float, default=0.95,
                   help="two-sided confidence level of every interval and test (default 0.95)")
    r.add_argument("--equivalence", type=float, default=0.01, metavar="NATS",
                   help="claim 2's equivalence margin: a change of gain below it counts as none (default 0.01)")
    r.add_argument("--in-domain", default=None, metavar="SET",
                   help="the in-domain validation set (default: indomain, heldout or mock if present, else the "
                        "first); every other set is out-of-distribution")
    r.add_argument("--overwrite", action="store_true",
                   help="replace report files in the output directory that `mkd report` did not write or that "
                        "changed since (its own earlier report is replaced without it; an input never is)")
    r.add_argument("--primary", metavar="SWEEP.yaml",
                   help="read the claims through the registered primary contrasts of this sweep file's `primary:` "
                        "block (one pre-named test per claim, no Bonferroni within it; the other comparisons "
                        "listed as secondary, uncorrected); its teachers, α and sets must be those of these runs. "
                        "A sweep directory's own block (its primary.json) is read without it; --primary wins")
    from megatron_kd.cli.report_primary import with_registered_primary

    r.set_defaults(func=with_registered_primary(cmd_report))

    a = sub.add_parser("analyze", help="entropy, top-1 agreement, KL and JS between two models")
    a.add_argument("teacher", help="teacher checkpoint / run dir / HF dir")
    a.add_argument("student", help="student checkpoint or run dir (its config gives the data)")
    a.add_argument("overrides", nargs="*", metavar="key=value")
    a.add_argument("--nproc", type=int, default=1)
    a.set_defaults(func=cmd_analyze)


def cmd_sweep(args) -> int:
    from megatron_kd.study.sweep_grid import load_sweep
    from megatron_kd.study.sweep_local import run_local
    from megatron_kd.study.sweep_recipes import write_recipes
    from megatron_kd.study.sweep_teachers import evaluate_teachers

    spec = load_sweep(args.sweep)
    if args.slurm and args.local:
        from megatron_kd.errors import ConfigError

        raise ConfigError("choose one of --local and --slurm")
    if args.stream is not None and (not args.slurm or not 0 < args.stream < float("inf")):
        from megatron_kd.errors import ConfigError

        raise ConfigError(f"--stream SECONDS needs --slurm and a finite SECONDS > 0 (got {args.stream:g}); e.g. "
                          "--slurm --stream 3600")
    check_power(spec, args.no_power_check)
    if args.slurm:
        from megatron_kd.cli.slurm_commands import job_spec
        from megatron_kd.cli.sweep_jobs import submit_sweep

        submit_sweep(spec, job_spec(args, "", []), args.only, args.stream)
        print(f"when the jobs are done: mkd report {spec['out']}")
        return 0
    if not args.local:
        written = write_recipes(spec, args.only)
        print(f"{len(written)} runs in {spec['out']}:")
        for point, recipe in written:
            print(f"  mkd train {recipe}")
        return 0
    run_local(spec, args.nproc, args.jobs, args.only)
    if args.only:  # a subset: the report waits for the whole grid (`mkd report` any time)
        print(f"[sweep] the points matching --only {' '.join(args.only)} are done; "
              f"the report: mkd report {spec['out']}")
        return 0
    evaluate_teachers(spec)
    from megatron_kd.study.primary import registered

    with registered(spec.get("primary"), f"sweep {spec['_path']}"):
        return cmd_report(type("A", (), {"sweep_dir": spec["out"]})())


def check_power(spec: dict, skip: bool) -> None:
    """With `power:` in the sweep, its design's power summary before anything runs, and the
    refusal when a test it requires power for cannot reach it (unless `--no-power-check`)."""
    if not spec.get("power"):
        return
    from megatron_kd.errors import ConfigError
    from megatron_kd.study.power import Noise
    from megatron_kd.study.power_report import power_refusal, power_summary, sweep_power

    power = spec["power"]
    noise = Noise(float(power["sigma"]), float(power["sigma_ood"]) if power.get("sigma_ood") else None,
                  source="the sweep's power.sigma")
    for line in power_summary(spec, noise):
        print(line)
    refusal = power_refusal(sweep_power(spec, noise), power.get("require") or {})
    if refusal and not skip:
        raise ConfigError(refusal)
    if refusal:
        print(f"[sweep] --no-power-check: launching anyway ({refusal})")


def cmd_report(args) -> int:
    from megatron_kd.errors import ConfigError
    from megatron_kd.study.report import build_report, build_report_from_table
    from megatron_kd.study.report_summary import summary_lines

    level, eq, in_domain = getattr(args, "level", 0.95), getattr(args, "equivalence", 0.01), \
        getattr(args, "in_domain", None)
    table = getattr(args, "table", None)
    if bool(table) == bool(args.sweep_dir):
        raise ConfigError("give a sweep directory or --table FILE.csv (one of them), e.g. mkd report "
                          "runs/sweeps/cpu-mini, or mkd report --table results.csv --out reports/mine")
    if getattr(args, "out", None) and not table:
        raise ConfigError("--out is for --table; a sweep's report is written into its directory")
    if math.isfinite(eq) and eq > MAX_EQUIVALENCE:  # a margin of 1e308 nats makes claim 2 hold always
        raise ConfigError(f"--equivalence {eq:g} must be at most {MAX_EQUIVALENCE:g} nats, e.g. 0.01")
    overwrite = getattr(args, "overwrite", False)
    if table:
        rep = build_report_from_table(Path(table), Path(args.out) if args.out else None, level, eq, in_domain,
                                      overwrite=overwrite)
    else:
        rep = build_report(Path(args.sweep_dir), level, eq, in_domain, overwrite=overwrite)
    print("\n".join(summary_lines(rep)))  # one screen; the whole report is report.md
    return 0


def cmd_analyze(args) -> int:
    from megatron_kd.checkpoint.refs import resolve_checkpoint, saved_config, verify_checkpoint
    from megatron_kd.cli.commands import launch_ranks
    from megatron_kd.config.overrides import override
    from megatron_kd.evals.analyze import run_analyze  # torch and megatron-core: after parsing

    ckpt = resolve_checkpoint(args.student)
    run_dir = str(ckpt.parent.parent)
    cfg = saved_config(ckpt, [override("run.dir", run_dir), override("teacher.checkpoint", args.teacher),
                              "teacher.model=null", "teacher.cache=null", "teacher.unigram=false", *args.overrides],
                       state=verify_checkpoint(ckpt))
    out = ckpt.parent.parent / "analyze" / f"{Path(args.teacher).name}__{ckpt.name}.json"

    def body(cfg, rank):
        res = run_analyze(cfg, ckpt, out)
        if rank == 0:
            for name, r in res.items():
                print(f"{name}: teacher entropy {r['teacher_entropy']:.4f} | student entropy "
                      f"{r['student_entropy']:.4f} | top-1 agreement {r['top1_agreement']:.4f} | "
                      f"KL(T||S) {r['kl_teacher_student']:.4f} | KL(S||T) {r['kl_student_teacher']:.4f} "
                      f"| JS {r['js']:.4f} ({r['tokens']} tokens)")
            print(f"written: {out}")

    return launch_ranks(args, cfg, body)
