"""`mkd`: one command line for every megatron_kd job (`mkd --help`, `mkd COMMAND --help`).

    mkd recipes                        list the shipped recipes
    mkd info RECIPE [key=value ...]    architecture, parameter count, FLOPs per token
    mkd config RECIPE [key=value ...]  validate and print the resolved config
    mkd train RECIPE [key=value ...] [--nproc N]
                                       train (one process, torchrun or srun)
    mkd eval CHECKPOINT [key=value ...] validation losses of a checkpoint
    mkd data corpus|train-tokenizer|preprocess
                                       build the embedded corpus / tokenizers / datasets
    mkd convert hf-to-mcore|mcore-to-hf SRC DST
                                       Hugging Face <-> megatron-core checkpoints
    mkd check-pair TEACHER STUDENT     tokenizer / vocabulary / length compatibility
    mkd sweep SWEEP.yaml [--local]     expand (and run) a teacher x student x alpha grid
    mkd report SWEEP_DIR               table, gains, best alpha, compute, plots
    mkd analyze TEACHER STUDENT        entropy, top-1 agreement, KL and JS
    mkd slurm submit RECIPE [key=value ...] --nodes N --gpus-per-node G [--dry-run]
                                       sbatch with srun launch and requeue on preemption
    mkd plan RECIPE --gpus N           per-GPU memory (student + teacher) and a layout

Errors are printed as one line starting with "mkd: error:" (what, where, the fix) and end the
command with a documented exit code; add --debug for the traceback. Exit codes:

    0    success
    1    an unexpected error: a bug in mkd (the traceback is printed; please report it)
    2    input error: recipe, override, sweep, hand-edited JSON, nesting too deep, unknown task
    3    setup error: missing package, wrong version, no GPU, the launch environment
    4    OS or resource error: disk full, name too long, permission denied, out of memory
    5    mkd plan: the run does not fit the GPUs' memory (a layout that fits is suggested)
    75   preempted (mkd train saved a checkpoint; requeue to resume)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys

from megatron_kd.errors import MKDError

EXIT_INPUT, EXIT_OS = 2, 4

EPILOG = """examples:
  mkd info models/llama3-1b
  mkd train train/tiny-mock train.steps=20
  mkd train train/tiny-mock parallel.tp=2 --nproc 2
  mkd init train/tiny-mock --out runs/seed      (initial weights once; checkpoint.load=runs/seed)
  mkd teacher-cache kd/cpu-tiny-to-small --out runs/cache --top-k all   (then teacher.cache=runs/cache)
  torchrun --nproc-per-node 2 -m megatron_kd train train/tiny-mock parallel.tp=2
  mkd train kd/cpu-tiny-to-small kd.alpha=0.2          (distill; needs the teacher trained)
  mkd sweep recipes/sweeps/cpu-mini.yaml --local && mkd report runs/sweeps/cpu-mini
  mkd fit runs/sweeps/cpu-mini --out law.json && mkd advise law.json --flops 1e15
  mkd slurm submit kd/paper-8b-to-1b --nodes 4 --gpus-per-node 8 --dry-run

exit codes: 0 success, 1 a bug (traceback printed: please report it), 2 input error,
  3 setup error, 4 OS or resource error (disk full, name too long, permission, memory),
  5 `mkd plan`: does not fit, 75 preempted (requeue to resume), 130 interrupted;
  --debug shows the traceback of any error
"""


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe path or name under recipes/ (e.g. train/tiny-mock)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override recipe keys, e.g. train.steps=20 parallel.tp=2")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as the one `mkd: error:` line every other error is (exit 2),
    pointing at --help instead of printing the usage block."""

    def error(self, message: str):
        self.exit(EXIT_INPUT, f"mkd: error: {self.prog}: {_bounded(message)}; see `{self.prog} --help`\n")


def add_teacher_cache_parser(sub) -> None:
    """`mkd teacher-cache`: its flags (checked in commands._cache_flags)."""
    from megatron_kd.cli import commands

    p = sub.add_parser("teacher-cache", help="run a KD recipe's teacher once over its student's data and "
                                             "cache its outputs for every run of a sweep",
                       description="Write the teacher-signal cache of a KD recipe: the teacher's top-K "
                                   "token ids and log-probabilities (or all of them), the mass outside, "
                                   "the label's log-probability and the entropy, for every token the "
                                   "recipe's student trains on. parallel.* overrides and --nproc give "
                                   "the teacher its own layout. Train from it with teacher.cache=DIR.")
    p.add_argument("recipe", nargs="?", help="the KD recipe (the student's data, length and teacher)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--out", help="the cache directory (an unfinished one is continued)")
    p.add_argument("--top-k", default=None, help="tokens kept per position, or 'all' (default 64)")
    p.add_argument("--nproc", type=int, default=1, help="processes for the teacher (its TP x PP x DP)")
    p.add_argument("--shard-rows", type=int, default=None, help="samples per shard (default: ~64 MiB shards)")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="random-sampling KD: store N draws per token from the teacher's distribution "
                        "(unbiased KD gradient; train with kd.top_k=null) instead of the top-K")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="precision of the stored log-probabilities: fp32 exact (default); fp16 half the "
                        "bytes, within 2^-11 relative (the 16-bit choice); bf16 within 2^-8. Token ids "
                        "always take the fewest bits the vocabulary needs")
    p.add_argument("--zstd", type=int, default=0, metavar="LEVEL",
                   help="compress each shard file with zstd at this level (1-22; default 0 = off)")
    p.add_argument("--window", type=int, default=None, metavar="N",
                   help="keep at most N shards on disk: write beside --readers student runs (started with "
                        "teacher.cache_wait_s) and delete the shards all of them have checkpointed past")
    p.add_argument("--readers", type=int, default=1, metavar="R",
                   help="with --window: the student runs that read the cache (default 1)")
    p.add_argument("--reader-wait", type=float, default=3600.0, metavar="SECONDS",
                   help="with --window: how long a shard waits for the readers before the job stops (default 3600)")
    p.add_argument("--verify", metavar="DIR", help="check every shard of a cache against its manifest")
    p.set_defaults(func=commands.cmd_teacher_cache)


def build_parser() -> argparse.ArgumentParser:
    from megatron_kd.cli import commands
    from megatron_kd.cli.convert_commands import add_convert_parsers
    from megatron_kd.cli.data_commands import add_data_parser
    from megatron_kd.cli.law_commands import add_law_parsers
    from megatron_kd.cli.power_commands import add_power_parser
    from megatron_kd.cli.slurm_commands import add_plan_parser, add_slurm_parser
    from megatron_kd.cli.study_commands import add_study_parsers

    parser = _Parser(
        prog="mkd", description="Knowledge distillation for LLM pretraining on megatron-core.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("recipes", help="list the shipped recipes")
    p.set_defaults(func=commands.cmd_recipes)

    p = sub.add_parser("info", help="architecture, parameter count and FLOPs of a recipe's model")
    _add_recipe_args(p)
    p.set_defaults(func=commands.cmd_info)

    p = sub.add_parser("config", help="validate a recipe and print the resolved config as YAML")
    _add_recipe_args(p)
    p.add_argument("--world-size", type=int, default=None,
                   help="also check the layout against this many processes")
    p.set_defaults(func=commands.cmd_config)

    p = sub.add_parser("train", help="train a model: pretraining, or distillation when the "
                                     "recipe names a teacher",
                       description="Train a model: pretraining (teachers, no-KD baselines) or, "
                                   "with teacher.checkpoint set, knowledge distillation. Runs as "
                                   "one process, under torchrun, or under srun without changes; "
                                   "--nproc N starts N local processes through torchrun. A run "
                                   "resumes from RUN_DIR/checkpoints/latest.")
    _add_recipe_args(p)
    p.add_argument("--nproc", type=int, default=1,
                   help="start this many local processes (torchrun) when not already launched")
    p.add_argument("--overwrite", action="store_true",
                   help="discard a different run found in run.dir (default: refuse)")
    p.add_argument("--profile-steps", type=int, default=0, metavar="N",
                   help="time the teacher forward and the KD loss over N steps (after the first) and "
                        "log their shares of the step (RUN_DIR/profile.json)")
    p.set_defaults(func=commands.cmd_train)

    p = sub.add_parser("eval", help="validation loss of a checkpoint on each named set",
                       description="Evaluate a checkpoint (any TP/PP it was saved with) on the "
                                   "validation sets of its config, or of the overrides; writes "
                                   "RUN_DIR/eval/<checkpoint>.json")
    p.add_argument("checkpoint", help="a checkpoint directory (RUN_DIR/checkpoints/NAME) or a run dir")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. parallel.tp=1 train.seq_length=64 logging.eval_samples=256")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--json-out", default=None, help="also write the result JSON here")
    p.add_argument("--tasks", default=None, help="lm-eval task names, comma separated")
    p.add_argument("--include-path", default=None, help="folder of local lm-eval task YAMLs")
    p.add_argument("--limit", type=int, default=None, help="lm-eval: examples per task")
    p.set_defaults(func=commands.cmd_eval)

    p = sub.add_parser("init", help="write a seed checkpoint: the recipe's initial weights, once",
                       description="Draw the recipe's initial student weights from run.seed (the same "
                                   "at any TP/PP) and write them as a step-0 checkpoint that loads at "
                                   "any layout; start runs from it with checkpoint.load=OUT (large "
                                   "models: every rank then skips the draw).")
    _add_recipe_args(p)
    p.add_argument("--out", required=True, help="new directory for the checkpoint")
    p.add_argument("--nproc", type=int, default=1, help="processes (the layout it is written at; any loads it)")
    p.set_defaults(func=commands.cmd_init)

    add_teacher_cache_parser(sub)

    add_data_parser(sub)
    add_convert_parsers(sub)
    add_study_parsers(sub)
    add_law_parsers(sub)
    add_power_parser(sub)
    add_slurm_parser(sub)
    add_plan_parser(sub)
    return parser


MAX_ERROR = 1000  # characters of one error line; a value quoted in a message can be huge


def _bounded(message: str) -> str:
    """One line of at most MAX_ERROR characters (the cut says how much was left out)."""
    line = " ".join(message.split("\n"))
    if len(line) <= MAX_ERROR:
        return line
    return f"{line[:MAX_ERROR]}... ({len(line) - MAX_ERROR} more characters)"


_OS_FIXES = {  # errno -> (what happened, the fix)
    errno.ENOSPC: ("no space left on the device", "free space there or write elsewhere (run.dir=, --out)"),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota or write elsewhere (run.dir=, --out)"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter name or path (most file systems allow 255 "
                                               "bytes per name)"),
    errno.EACCES: ("permission denied", "choose a path you can read and write, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a path you own, or fix its permissions"),
    errno.EROFS: ("read-only file system", "write to a writable directory (run.dir=, --out)"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.EEXIST: ("file exists", "remove it or choose another path"),
    errno.EISDIR: ("is a directory", "give a file path"),
    errno.ENOTDIR: ("not a directory", "check each folder of the path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or run fewer jobs at once"),
    errno.EADDRINUSE: ("address already in use", "another process took the port; run again, or set "
                                                 "MASTER_PORT to a free port"),
    errno.ENOMEM: ("out of memory", "use a smaller model, train.seq_length or train.micro_batch_size"),
}


def _os_line(exc: OSError) -> str:
    what, fix = _OS_FIXES.get(exc.errno, (exc.strerror or type(exc).__name__, "check the path and retry"))
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = f": {' -> '.join(paths)}" if paths else ""
    if exc.errno == errno.ENAMETOOLONG and paths:
        longest = max(len(part.encode()) for part in paths[0].split("/"))
        where += f" (its longest name is {longest} bytes)"
    return f"{what}{where}; {fix}"


def _causes(exc: BaseException):
    """`exc` and what caused it (libraries wrap an OSError in their own exception: megatron-core's
    dataset builder raises a bare Exception from ENOSPC). Only explicit causes (`raise ... from`):
    an error met while handling another is a different failure, not its explanation."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__


# How libraries word a failed write when they drop the errno: torch.save's writer, numpy's
# memmap, safetensors (Rust: "os error 28" is ENOSPC)
_WRITE_FAILED = ("file write failed", "failed writing file", "not enough free space", "no space left on device",
                 "os error 28", "disk quota exceeded")


def _describe_one(exc: BaseException) -> tuple[str, int] | None:
    if isinstance(exc, json.JSONDecodeError):  # a JSON file read outside jsonio's checks
        return f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); fix or re-create the " \
               "file", EXIT_INPUT
    if isinstance(exc, UnicodeDecodeError):  # a file read as text outside the readers that name it
        return f"an input file is not UTF-8 text ({exc.reason} at byte {exc.start}); give a UTF-8 text " \
               "file (recipes, tables and JSON files are text)", EXIT_INPUT
    if isinstance(exc, OverflowError):  # a number past what a float or an index can hold
        detail = " ".join(str(exc).split())[-120:]
        return f"a number in the input is too large to compute with ({detail}); check the values given " \
               "(flags, recipe values, table cells) for sizes or exponents out of range", EXIT_INPUT
    if isinstance(exc, RecursionError):
        return "an input is nested too deeply to read (a recipe, override or JSON value thousands of " \
               "levels deep); flatten it", EXIT_INPUT
    memory = isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))
    if memory:  # torch's CPU allocator raises RuntimeError; its CUDA one OutOfMemoryError
        detail = " ".join(str(exc).split())[-160:]  # torch's says how many bytes, at the end
        return (f"out of memory{f' ({detail})' if detail else ''}: the model or batch is too big for this "
                "machine; use a smaller model (model.hidden_size, model.num_layers, model.vocab_size), "
                "train.seq_length or train.micro_batch_size, or more processes (`mkd plan`)", EXIT_OS)
    if isinstance(exc, OSError) and exc.errno is not None:
        return _os_line(exc), EXIT_OS
    if any(m in str(exc).lower() for m in _WRITE_FAILED):
        detail = " ".join(str(exc).split())[-160:]
        return (f"a file write failed ({detail}): the disk is probably full or over quota; free space "
                "there or write elsewhere (run.dir=, --out)", EXIT_OS)
    return None


def describe(exc: BaseException) -> tuple[str, int] | None:
    """(one line, exit code) for the failure classes a user can act on, found in `exc` or in what
    caused it; None for anything else (an unexpected exception is a bug: its traceback is shown,
    not hidden)."""
    for e in _causes(exc):
        known = _describe_one(e)
        if known is not None:
            return known
    return None


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line as `mkd` reads it (a bad one is the parser's one-line error, exit 2)."""
    parser = build_parser()
    # Overrides may come after options (`mkd train R --nproc 2 train.steps=5`); argparse leaves
    # those as extras, which are overrides when they look like key=value.
    args, extras = parser.parse_known_args(argv)
    bad = [e for e in extras if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extras:
        args.overrides = list(args.overrides) + extras
    args.argv = list(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except MKDError as exc:
        if args.debug:
            raise
        print(f"mkd: error: {_bounded(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mkd: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the known failure classes are one line; anything else is a bug
        from megatron_kd.runtime import preemption  # lazy: only on a failure

        if preemption.terminated_in_start_up():  # the SIGTERM's SystemExit, turned into something
            return 128 + signal.SIGTERM          # else by the code it landed in (seen: a RecursionError)
        known = describe(exc)
        if known is None or args.debug:
            raise
        message, code = known
        print(f"mkd: error: {_bounded(message)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
