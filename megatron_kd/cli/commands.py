"""Entry functions behind each `mkd` subcommand (typed, unit-testable, no argparse magic).

Imports of torch-using modules sit inside the command functions: `mkd --help`, `mkd config` and
the error paths stay fast (torch ~2 s, megatron-core ~5 s per process) and megatron-core is
first imported after the CPU compatibility layer is active (runtime.distributed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from megatron_kd.checkpoint.refs import resolve_checkpoint, saved_config, verify_checkpoint
from megatron_kd.config import load_config, padded_vocab, validate
from megatron_kd.config.loader import RECIPES_ROOT, config_to_dict
from megatron_kd.config.overrides import override
from megatron_kd.config.validate import moe_layers
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.models.flops import flop_params, training_flops_per_token
from megatron_kd.models.params import count_parameters, human

# Set by `mkd train --nproc N` for the ranks it starts: the launch has run its start-up checks
# (teacher resolution with the tokenizer comparison, preflight) once, the ranks skip them.
CHECKED_ENV = "MKD_LAUNCH_CHECKED"


def recipe_description(path: Path, width: int = 90) -> str:
    """A recipe's first sentence, from the comment that opens it (every shipped recipe has one)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(part for part in lines if part)
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= width else sentence[:width - 1].rstrip() + "…"


def cmd_recipes(args) -> int:
    # Names starting with "_" are bases that other recipes build on, not runs of their own.
    paths = [p for p in sorted(RECIPES_ROOT.rglob("*.yaml")) if not p.name.startswith("_")]
    names = [str(p.relative_to(RECIPES_ROOT).with_suffix("")) for p in paths]
    width = max(map(len, names), default=0)
    for name, path in zip(names, paths):
        print(f"{name:<{width}}  {recipe_description(path)}".rstrip())
    return 0


def cmd_info(args) -> int:
    cfg = load_config(args.recipe, args.overrides, purpose="model")
    m = cfg.model
    padded = padded_vocab(m, cfg.parallel.tp)
    c = count_parameters(m)
    head_dim = m.kv_channels or m.hidden_size // m.num_attention_heads
    groups = m.num_query_groups or m.num_attention_heads
    seq, seq_source = _info_seq_length(args, cfg)
    rows = [
        ("model", m.name),
        ("layers x hidden", f"{m.num_layers} x {m.hidden_size} (ffn {m.ffn_hidden_size}, SwiGLU)"),
        ("attention", f"{m.num_attention_heads} query heads, {groups} kv heads, head dim {head_dim}"),
        ("rope", f"base {m.rotary_base}" + (f", scaled x{m.rope_scaling_factor}" if m.rope_scaling else "")),
        ("vocab", f"{m.vocab_size} (padded to {padded} at tp={cfg.parallel.tp})"),
        ("embeddings", "untied" if m.untie_embeddings_and_output_weights else "tied"),
        ("parameters", f"{human(c.total)} ({c.total:,})"),
        ("  embedding + output", f"{human(c.embedding + c.output)} ({c.embedding + c.output:,})"),
        ("  non-embedding", f"{human(c.non_embedding)} ({c.non_embedding:,})"),
        *_moe_rows(m, c),
        ("train FLOPs/token", f"{human(training_flops_per_token(m, seq))} at seq {seq}{seq_source}"),
        ("  = 6 x FLOP params", f"{human(flop_params(m, seq))} (matmul weights + output layer + attention: "
                                "the N of the report's, fit's and advise's FLOPs)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _moe_rows(m, c) -> list[tuple[str, str]]:
    """mkd info's lines for an MoE model: its experts and the parameters one token uses."""
    if not m.moe.num_experts:
        return []
    moe = m.moe
    layers = sum(moe_layers(m))
    return [("experts", f"{moe.num_experts} per MoE layer ({layers} of {m.num_layers} layers), top-{moe.router_topk}, "
                        f"expert ffn {moe.ffn_hidden_size or m.ffn_hidden_size}"
                        + (f", shared expert ffn {moe.shared_expert_ffn_hidden_size}"
                           if moe.shared_expert_ffn_hidden_size else "")),
            ("  active per token", f"{human(c.active)} ({c.active:,}; the FLOPs below count these)"),
            ("  routed experts", f"{human(c.experts)} ({c.experts:,}; split over parallel.ep)")]


def _info_seq_length(args, cfg) -> tuple[int, str]:
    """(sequence length, what it is when not the recipe's): the recipe's train.seq_length if the
    recipe or an override sets it, else the model's own max_position_embeddings (a model recipe
    has no training length; the schema's default of 32 would say little about the model)."""
    from megatron_kd.config.loader import apply_overrides, load_recipe_dict, resolve_recipe_path

    data = apply_overrides(load_recipe_dict(resolve_recipe_path(args.recipe)) if args.recipe else {},
                           list(args.overrides or []))
    if "seq_length" in (data.get("train") or {}):
        return cfg.train.seq_length, ""
    return cfg.model.max_position_embeddings, " (the model's max_position_embeddings)"


def cmd_config(args) -> int:
    cfg = load_config(args.recipe, args.overrides)
    if args.world_size is not None:
        validate(cfg, args.world_size)
    sys.stdout.write(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return 0


def _relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """Start `nproc` local ranks of this same command through torchrun (argument list only)."""
    from megatron_kd.runtime.distributed import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "megatron_kd", *argv]
    env = dict(os.environ, **{CHECKED_ENV: "1"})
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call(cmd, env=env)


def _argv_without_nproc(argv: list[str]) -> list[str]:
    """The command line for the torchrun children (all but --nproc N)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def launch_ranks(args, cfg, body, before_start=None) -> int:
    """Run `body(cfg)` on every rank: relaunch through torchrun for --nproc, else join the
    launcher's world; process groups up before, torn down after. `before_start` runs once the
    launcher's own checks passed, before any rank starts (mkd train takes the run-dir lock)."""
    from megatron_kd.cli.logs import setup_logging
    from megatron_kd.models.gpt import check_cuda_features
    from megatron_kd.runtime.distributed import check_master_addr, detect_launch_env, init_distributed, shutdown

    launch = detect_launch_env()
    if launch.world_size > 1:  # before anything is written: a host that never resolves is one line
        check_master_addr(launch)
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and launch.launcher != "single":
        raise ConfigError(
            f"--nproc is for local launches; under {launch.launcher} the launcher sets the "
            "process count, so drop --nproc")
    validate(cfg, args.nproc if args.nproc > 1 else launch.world_size)
    check_cuda_features(cfg)
    if before_start is not None:
        before_start()
    if args.nproc > 1:
        return _relaunch_with_torchrun(args.nproc, _argv_without_nproc(args.argv))
    setup_logging(cfg.logging.level, launch.rank)
    init_distributed(cfg.parallel, cfg.run.seed, launch, timeout_s=cfg.run.rendezvous_timeout_s)
    ok = False
    try:
        body(cfg, launch.rank)
        ok = True
    finally:
        shutdown(barrier=ok)
    return 0


def cmd_train(args) -> int:
    from megatron_kd.runtime import preemption

    preemption.install()  # first: a warning signal during start-up must not kill the run
    from megatron_kd.checkpoint.checkpointer import Checkpointer
    from megatron_kd.runtime.distributed import detect_launch_env
    from megatron_kd.training.faults import Faults
    from megatron_kd.training.loop import run_training
    from megatron_kd.training.preflight import preflight_train
    from megatron_kd.training.resolve import CheckedLaunch
    from megatron_kd.training.run_dir import lock_run_dir, remove_unused_run_dir

    if args.profile_steps < 0:
        raise ConfigError(f"--profile-steps must be >= 0, got {args.profile_steps}")
    cfg = load_config(args.recipe, args.overrides)
    faults = Faults.from_env()
    checkpointer = Checkpointer(cfg, save_hook=faults.save_hook())  # this launch's one: checks, load, saves
    outcome, before_start = {}, None
    checked = CheckedLaunch(teacher_checked=True)  # a rank that the checked launcher started
    if os.environ.get(CHECKED_ENV) != "1":  # once per launch, before any process group starts
        checked = preflight_train(cfg, checkpointer, args.overwrite, world_size=args.nproc)
        if detect_launch_env().rank == 0:  # the launching process holds it while the ranks run
            def before_start():  # after launch_ranks' checks
                outcome["created_dir"] = lock_run_dir(cfg.run.dir)

    def body(cfg, rank):
        result = run_training(cfg, checkpointer, checked, overwrite=args.overwrite,
                              profile_steps=args.profile_steps, faults=faults)
        outcome["preempted"] = result.status == "preempted"
        if rank == 0:
            print(describe_result(result, cfg.run.dir))

    rc = 1
    try:
        rc = launch_ranks(args, cfg, body, before_start)
    finally:
        if rc != 0 and outcome.get("created_dir"):  # a launch that failed before its first step
            remove_unused_run_dir(cfg.run.dir)
    return preemption.EXIT_PREEMPTED if outcome.get("preempted") else rc


def describe_result(result, run_dir: str) -> str:
    """The line `mkd train` ends with, on rank 0 (the sweep runner reads its first word)."""
    from megatron_kd.runtime import preemption

    m = result.metrics
    vals = "".join(f", {k[4:]} {v:.4f}" for k, v in m.items() if k.startswith("val/"))
    if result.status == "preempted":
        return (f"preempted at step {result.step}: checkpoint saved in {run_dir}; "
                f"exit {preemption.EXIT_PREEMPTED} (requeue and start again to resume)")
    if result.status == "already_complete":
        return f"already complete: {result.step} steps{vals}, run dir {run_dir} (use another run.dir to train again)"
    if result.steps_run == 0:  # stopped: train.stop_at_step at or below the step it resumed at
        return (f"stopped: the run is at step {result.step} of {result.total}, at or past train.stop_at_step{vals}; "
                f"raise or drop train.stop_at_step to continue, run dir {run_dir}")
    # A KD run's loss is its training objective (at alpha 1 the KD term alone, e.g. 0.05 beside
    # validation losses near 5): named as such, with the train CE beside it.
    loss = (f"final train objective (mix of CE and T^2*KD at alpha {m['alpha']:.3g}) {m['loss']:.4f}, "
            f"train CE {m['lm loss']:.4f}" if "kd loss" in m else f"final train CE {m['loss']:.4f}")
    line = f"done: {result.step} steps, {loss}{vals}, run dir {run_dir}"
    if result.status == "stopped":
        line += f" (train.stop_at_step: {result.step} of {result.total} steps; start again to continue)"
    return line


def _cache_flags(args) -> int | None:
    """`mkd teacher-cache`'s flags checked (and --sample folded into --top-k): the K to cache,
    None for the whole distribution."""
    from megatron_kd.config.validate import MAX_WAIT_S
    from megatron_kd.distill.cache_window import MAX_WINDOW

    top_k = None
    if args.sample is not None:
        if args.sample < 1 or args.top_k is not None:
            raise ConfigError(f"--sample N needs N >= 1 and no --top-k (got --sample {args.sample}, "
                              f"--top-k {args.top_k}); e.g. --sample 32")
        args.top_k = str(args.sample)
    args.top_k = args.top_k or "64"
    if args.top_k != "all":
        try:
            top_k = int(args.top_k)
        except ValueError:
            top_k = 0
        if top_k < 1:
            raise ConfigError(f"--top-k must be a positive integer or 'all', got {args.top_k!r}")
    if args.shard_rows is not None and args.shard_rows < 1:
        raise ConfigError(f"--shard-rows must be >= 1, got {args.shard_rows}")
    if args.window is not None and (not 2 <= args.window <= MAX_WINDOW or not 1 <= args.readers <= MAX_WINDOW
                                    or not 0 < args.reader_wait < float("inf")):  # NaN fails both
        raise ConfigError(f"--window needs N >= 2 shards, --readers >= 1 and a finite --reader-wait > 0 (got "
                          f"--window {args.window}, --readers {args.readers}, --reader-wait {args.reader_wait:g}); "
                          "e.g. --window 4 --readers 1")
    if args.window is not None and args.reader_wait > MAX_WAIT_S:  # a wait that long is a wait forever
        raise ConfigError(f"--reader-wait must be at most {MAX_WAIT_S:,} seconds (30 days), got "
                          f"{args.reader_wait:g}; e.g. --reader-wait 3600")
    if not 0 <= args.zstd <= 22:
        raise ConfigError(f"--zstd must be a level in 1..22 (0 = off), got {args.zstd}")
    return top_k


def cmd_teacher_cache(args) -> int:
    from megatron_kd.distill.cache_encoding import Encoding
    from megatron_kd.distill.teacher import resolve_teacher
    from megatron_kd.training.preflight import check_data
    from megatron_kd.training.teacher_cache import check_out, plan_cache, verify_cache, write_teacher_cache

    if args.verify:
        print(verify_cache(Path(args.verify)))
        return 0
    if not args.recipe or not args.out:
        raise ConfigError("give a KD recipe and --out DIR (or --verify DIR); e.g. "
                          "mkd teacher-cache kd/cpu-tiny-to-small --out runs/cache-tiny --top-k 64")
    top_k = _cache_flags(args)
    cfg = load_config(args.recipe, [*args.overrides, "teacher.cache=null"])
    if not cfg.teacher.checkpoint:
        raise ConfigError(f"{args.recipe} names no teacher.checkpoint; the cache job runs a KD recipe's teacher")
    out = Path(args.out).absolute()
    checked = os.environ.get(CHECKED_ENV) == "1"
    _, teacher, _ = resolve_teacher(cfg, check=not checked)
    if top_k is not None and top_k > cfg.model.vocab_size:
        if args.sample is not None:
            raise ConfigError(f"--sample {top_k} is above the vocabulary of {cfg.model.vocab_size} (draws per token); "
                              "use a smaller N, or --top-k all")
        raise ConfigError(f"--top-k {top_k} is above the vocabulary of {cfg.model.vocab_size}; use a smaller K "
                          "or --top-k all")
    cfg.model = teacher  # the job's model is the teacher: the layout is checked against it
    cfg.run.dir = str(out)  # megatron-core's dataset index cache goes under it
    encoding = Encoding.for_vocab(cfg.model.vocab_size, args.dtype, args.zstd, draws=args.sample or 0)
    planned = plan_cache(cfg, top_k, args.shard_rows, encoding, sampled=args.sample is not None,
                         window=args.window, readers=args.readers)
    before_start = None
    if not checked:
        check_data(cfg)
        check_out(out, planned)
        from megatron_kd.training.preflight import check_memory

        check_memory(cfg, training=False, world_size=args.nproc)  # the teacher's forward must fit
        from megatron_kd.runtime.distributed import detect_launch_env
        from megatron_kd.training.run_dir import lock_run_dir

        if detect_launch_env().rank == 0:  # one cache job per --out: a second is refused, not raced
            before_start = lambda: lock_run_dir(out, "mkd teacher-cache", "--out")  # noqa: E731

    def body(cfg, rank):
        r = write_teacher_cache(cfg, out, top_k, planned, args.reader_wait)
        if rank == 0:
            tokens = r["samples"] * cfg.train.seq_length
            print(f"teacher cache {out}: {r['samples']} samples ({tokens:,} tokens), top-k "
                  f"{'all' if top_k is None else top_k}{' sampled' if args.sample else ''} ({encoding.describe()}), "
                  f"{r['shards']} shards"
                  + (f" (at most {r['max_on_disk']} on disk at once, window {args.window})"
                     if r["max_on_disk"] is not None else "") + "; "
                  "the teacher ran over the "
                  f"{'whole stream' if r['written'] == r['shards'] else 'shards that were missing'}; "
                  f"train from it with teacher.cache={out}")

    return launch_ranks(args, cfg, body, before_start)


EVAL_RESULT_KEYS = {"checkpoint", "step", "tokens", "loss"}  # a file `mkd eval --json-out` wrote


def check_json_out(target: str) -> Path:
    """`--json-out` writes only where `mkd eval` owns the file: never inside a checkpoint or a
    run directory (their files are the run's, its state file included), never over a file that
    is not an earlier eval result. Checked before the eval runs."""
    path = Path(target).absolute()
    for d in path.parents:
        run_dir = (d / "checkpoints").is_dir() and (d / "config.yaml").is_file() or (d / ".mkd.lock").exists()
        if (d / "mkd_state.json").is_file() or run_dir:
            raise ConfigError(f"--json-out {target} is inside {d}, a checkpoint or run directory whose files "
                              "belong to it (the eval already writes RUN_DIR/eval/NAME.json); choose a path "
                              "outside it")
    if path.is_dir() or path.is_symlink():
        raise ConfigError(f"--json-out {target} is a directory or a link; give a file path")
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            old = None
        if not (isinstance(old, dict) and EVAL_RESULT_KEYS <= set(old)):
            raise ConfigError(f"--json-out {target} exists and is not an earlier `mkd eval` result; it is left "
                              "as it is: choose another path or remove it yourself")
    return path


def cmd_eval(args) -> int:
    from megatron_kd.evals.checkpoint_eval import run_eval

    json_out = check_json_out(args.json_out) if args.json_out else None
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: give the number of examples per task, at least 1 (or leave "
                          "--limit out for every example)")
    ckpt = resolve_checkpoint(args.checkpoint)
    cfg = saved_config(ckpt, [override("run.dir", ckpt.parent.parent), "teacher.checkpoint=null",  # the student alone
                              *args.overrides], state=verify_checkpoint(ckpt))
    from megatron_kd.training.preflight import check_memory

    check_memory(cfg, training=False)  # forward only: weights, activations, logits
    tasks = [t for t in (args.tasks or "").split(",") if t]
    if tasks and os.environ.get(CHECKED_ENV) != "1":  # an unknown task is refused before the model loads
        from megatron_kd.evals.lm_eval_adapter import check_tasks, task_manager  # lazy: lm-eval is optional

        check_tasks(tasks, task_manager(args.include_path))

    def body(cfg, rank):
        r = run_eval(cfg, ckpt, tasks, args.include_path, args.limit)
        if rank == 0:
            print(f"{ckpt} (step {r['step']}, {r['tokens']:,} tokens) at seq {r['seq_length']}, "
                  f"tp={r['tp']} pp={r['pp']}:")
            for name, loss in r["loss"].items():
                print(f"  {name:<16} loss {loss:.4f}  ppl {r['perplexity'][name]:.2f}  "
                      f"({r['sequences'][name]} sequences)")
            for task, metrics in (r.get("tasks") or {}).get("results", {}).items():
                shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                  if isinstance(v, float) and "stderr" not in k)
                print(f"  task {task}: {shown}")
            print(f"written: {r['written']}")
            if json_out:
                json_out.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(json_out, json.dumps(r, indent=2))

    return launch_ranks(args, cfg, body)


def cmd_init(args) -> int:
    from megatron_kd.checkpoint.checkpointer import check_new_checkpoint_dir
    from megatron_kd.training.seed_checkpoint import write_seed_checkpoint

    cfg = load_config(args.recipe, args.overrides)
    out = Path(args.out).absolute()
    check_new_checkpoint_dir(out)
    from megatron_kd.training.preflight import check_memory

    check_memory(cfg)  # the weights and the optimizer state it writes must fit

    def body(cfg, rank):
        write_seed_checkpoint(cfg, out)
        if rank == 0:
            print(f"wrote {out}: the initial weights of {cfg.model.name} for run.seed={cfg.run.seed} "
                  f"(step 0; loads at any layout: checkpoint.load={out})")

    return launch_ranks(args, cfg, body)
