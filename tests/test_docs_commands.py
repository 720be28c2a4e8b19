"""Every `mkd ...` line of a shell block in README.md and docs/*.md, run as a user who follows the
pages in the README's reading order after `make demo` would run it, and failing when one errors.

The user's state is a sandbox directory (the working directory of every command), built once:
  - the embedded corpus, by data.md's own `mkd data corpus --out data/corpus` (run as written);
  - the teacher checkpoints `make demo` leaves (recipes/sweeps/cpu-mini.yaml names each one the
    demo trains: cpu-tiny stops at step 100, so tokens_204800 and not tokens_614400 exists) and
    the sweep directories of `make demo` / `make study` / `make law`, as directories whose
    existence is what a command is checked against (no model is trained here);
  - `make law`'s law (docs/law/law.json, what `make law` wrote) as `law.json`;
  - and then what each command shown earlier writes: a `mkd train` its run directory, a
    `mkd teacher-cache` its cache (with the samples, teacher and kind it holds), `mkd init` its
    checkpoint, `mkd advise --write-recipes` its recipes.

How each line is run (RULES, first match wins; the test prints every line with its rule):
  skip       a placeholder the user fills in (RECIPE, NAME, TEACHER_RUN, <...>): not runnable.
  parse      inputs the user brings (absolute paths such as /models/..., /lustre/...; files of
             USER_FILES such as a.txt, docs.jsonl): the CLI's argument parser, and for a recipe
             command the recipe with its overrides resolved (`mkd config`'s load).
  validate   long runs (`mkd train`, `mkd init`, `mkd eval`, `mkd teacher-cache`): the recipe and
             overrides resolved and validated at the command's world size (--nproc), then what the
             run would find before its first step: its data prefixes (checked as preflight does),
             its teacher checkpoint, `checkpoint.load`, a `teacher.cache` that an earlier command
             wrote for the same teacher and at least as many samples, with KD options it can serve;
             a cache job's --out, which must be new or hold a cache of the same plan; a train's
             run.dir, which must not hold an earlier shown run of another config (refused) or of
             as many steps (a resume that trains nothing); and
             `mkd convert mcore-to-hf` of a run an earlier `mkd train` writes. Paper-scale recipes
             (kd/paper-*, train/llama3-1b-paper) are checked up to their files, which live on a
             GPU cluster.
  dry        `mkd sweep --local` / `--slurm`: the sweep without them (it expands the grid and
             writes the points' recipes, runs nothing); `mkd fit` / `mkd report` on a sweep
             directory: that directory is what a `make` target leaves.
  run        everything else, in this process, as written (`mkd recipes`, `info`, `config`,
             `plan`, `power`, `advise`, `slurm submit [--dry-run]` with its option given, ...).
A line that fails is reported with the error it gives the user. KNOWN_FAILURES lists the lines
that fail today where the fix is not on these pages (printed each run, not failing the test).

Commands shown with their output (`$ mkd ...` in a plain block, the output under it) are run too,
and the output must be what the page quotes (test_quoted_output_is_what_the_command_prints).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.distributed import REPO
from tests.test_docs import PAGES

# The README's documentation table gives the reading order; pages it does not list come last.
ORDER = ["README.md", "training.md", "data.md", "distillation.md", "teacher-cache.md", "checkpoints.md", "moe.md",
         "report.md", "scaling-law.md", "STUDY.md", "slurm-and-gpus.md", "reliability.md",
         "PERFORMANCE.md", "architecture.md"]
PLACEHOLDER = re.compile(r"<[^>]+>|[A-Z][A-Z0-9_]{2,}")  # RECIPE, NAME, TEACHER_RUN, <HF dir>
CORPUS = "mkd data corpus --out data/corpus"  # data.md's; `make demo` runs it first
USER_FILES = {"a.txt", "b.txt", "docs.jsonl", "tok/tokenizer.model", "llama3/tokenizer.json",
              "'fineweb-edu/sample/10BT/*.parquet'", "fineweb-edu/sample/10BT/*.parquet",
              "ckpts/llama-1b", "kd/my-student", "results.csv"}
PAPER_SCALE = re.compile(r"^(kd/paper-|train/llama3-1b-paper)")
LONG_RUNS = {"train", "init", "eval", "teacher-cache"}
# Shown commands that fail today on pages whose fix is package code or another page's owner's
# (docs/scaling-law.md: `mkd advise` on make law's law.json; the two `mkd train` lines after it
# read the recipes that advise would have written). Reported on every run; the test does not
# fail on them, and says when one passes again (then remove it here).
KNOWN_FAILURES: dict[tuple[str, str], str] = {}
# The sweep directories the make targets leave (each sweep's `out:`).
MADE_BY = {"runs/sweeps/cpu-mini": "make demo", "runs/sweeps/cpu-study": "make study",
           "runs/sweeps/cpu-law": "make law"}


def page_commands(page: Path) -> list[tuple[str, str]]:
    """The page's `mkd` commands in order, each with its comment: shell-block lines,
    continuations joined, `a && b` split."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", page.read_text(), flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line, _, comment = line.partition(" #")
            out += [(c.strip(), comment) for c in line.split("&&") if c.strip().startswith("mkd ")]
    return out


CLAIM = re.compile(r"\b\d+(?:\.\d+)?(?:B|%| GiB)(?!\w)")  # "8.03B", "0.4%": what the output must show


def unquoted_claims(comment: str, printed: str) -> list[str]:
    """Numbers a command's comment says it prints that its output does not show."""
    return [c for c in CLAIM.findall(comment) if c not in printed]


def _ordered_pages() -> list[Path]:
    return sorted(PAGES, key=lambda p: ORDER.index(p.name) if p.name in ORDER else len(ORDER))


def _words(line: str) -> list[str]:
    """The argv the shell would pass: optional `[...]` parts given, as a user trying them would."""
    words = shlex.split(line.replace("[", "").replace("]", ""))[1:]
    return words[:words.index("|")] if "|" in words else words


def rule(line: str) -> str:
    words = _words(line)
    if "<" in line or any(PLACEHOLDER.fullmatch(w) for w in re.split(r"[\s=/,]+", line)):
        return "skip"
    raw = shlex.split(line, posix=False)
    if any(w.startswith("/") or w in USER_FILES for w in words + raw):
        return "parse"
    if words[0] in LONG_RUNS and "--verify" not in words:
        return "validate"
    if words[:2] == ["convert", "mcore-to-hf"]:  # its input: a run an earlier `mkd train` writes
        return "validate"
    if (words[0] == "sweep" and ("--local" in words or "--slurm" in words)) or words[0] in ("fit", "report"):
        return "dry"
    return "run"


class State:
    """What exists in the user's directory, beyond files on disk: caches by directory."""

    def __init__(self, root: Path):
        self.root = root
        self.caches: dict[str, dict] = {}
        self.validated: dict[str, str] = {}  # directory -> the validated (not run) command that writes it
        self.steps: dict[str, int] = {}  # run.dir -> the steps the run there has trained

    def exists(self, path: str | None) -> bool:
        return bool(path) and (self.root / path).exists()

    def make_dir(self, path: str, by: str) -> None:
        (self.root / path).mkdir(parents=True, exist_ok=True)
        self.validated[path] = by


def _demo_checkpoints() -> list[str]:
    """The teacher checkpoints `make demo` trains: those recipes/sweeps/cpu-mini.yaml reads."""
    import yaml

    grid = yaml.safe_load((REPO / "recipes/sweeps/cpu-mini.yaml").read_text())["grid"]
    paths = [t["checkpoint"] for t in grid["teacher"]]
    tg = grid["teacher_grid"]
    return paths + [tg["checkpoint"].format(tokens=n) for n in tg["tokens"]]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user")
    (root / "recipes").symlink_to(REPO / "recipes")  # pages name sweeps by their path in the repo
    shutil.copy(REPO / "docs/law/law.json", root / "law.json")
    for ckpt in _demo_checkpoints():
        (root / ckpt).mkdir(parents=True)
    for sweep_dir in MADE_BY:
        (root / sweep_dir).mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert _main(_words(CORPUS)) == 0
    return root


class Failed(Exception):
    """A shown command that would fail for the user: the line says why."""


def need(ok: bool, why: str) -> None:
    if not ok:
        raise Failed(why)


def _main(args: list[str]) -> int:
    from megatron_kd.cli.main import main

    return main(args)


def _samples(cfg) -> int:
    """The samples a run trains on: what a cache for it holds (training/teacher_cache.plan_cache)."""
    from megatron_kd.config.validate import train_steps

    return train_steps(cfg) * cfg.train.global_batch_size


def _option(words: list[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words else None


def _recipe_and_overrides(words: list[str]) -> tuple[str, list[str]]:
    """The recipe and key=value overrides of a recipe command (flags and their values removed)."""
    from megatron_kd.cli.main import parse

    ns = parse(words)
    return ns.recipe, list(ns.overrides)


def validate(words: list[str], state: State) -> str:
    """What a long run checks before its first step, without the run (see the module docstring)."""
    from megatron_kd.config.loader import load_config
    from megatron_kd.config.validate import validate as validate_layout
    from megatron_kd.config.validate import validate_layout as validate_model_layout
    from megatron_kd.distill.cache_checks import check_kd
    from megatron_kd.training.preflight import check_data

    cmd = words[0]
    if cmd == "convert":
        src = words[2]
        need(src in state.validated, f"mkd convert: {src} is written by no command shown before this one")
        return f"{src} is the run of `{state.validated[src]}`"
    if cmd == "eval":
        ckpt = words[1]
        need(state.exists(ckpt), f"mkd eval: {ckpt} does not exist here (no run or checkpoint wrote it)")
        return "checkpoint exists"
    recipe, overrides = _recipe_and_overrides(words)
    if cmd == "teacher-cache":
        overrides = [*overrides, "teacher.cache=null"]
    cfg = load_config(recipe, overrides)
    nproc = int(_option(words, "--nproc") or 1)
    validate_layout(cfg, nproc)
    if cmd == "train":
        check_run_dir_as_a_run_would(cfg, words, state)
    if PAPER_SCALE.match(recipe):
        if cfg.checkpoint.load:
            need(state.exists(cfg.checkpoint.load), f"checkpoint.load {cfg.checkpoint.load} was not written here")
        if cmd == "init":
            state.make_dir(_option(words, "--out"), "mkd " + " ".join(words))
        return "config resolved (paper scale: its data and teacher live on a GPU cluster)"
    t = cfg.teacher
    if cmd == "teacher-cache":  # what the cache will hold, for the commands after it
        sample, top_k, out = _option(words, "--sample"), _option(words, "--top-k") or "64", _option(words, "--out")
        plan = {"teacher": t.checkpoint, "samples": _samples(cfg), "sampled": sample is not None,
                "top_k": "all" if top_k == "all" else int(sample or top_k),
                **{k: _option(words, f"--{k}") for k in ("dtype", "zstd", "window", "readers")}}
        before = state.caches.get(out)  # a cache job continues only a cache of the same plan
        need(before in (None, plan), f"--out {out} holds the teacher cache an earlier command wrote ("
             f"{', '.join(k for k in plan if plan[k] != before[k]) if before else ''} differ); the job refuses it")
        state.caches[out] = plan
    check_data(cfg)
    notes = ["data checked"]
    if t.cache:
        made = state.caches.get(t.cache)
        need(made is not None, f"teacher.cache={t.cache}: no command before this one wrote that cache")
        need(made["teacher"] == t.checkpoint, f"teacher.cache={t.cache} holds teacher {made['teacher']}, "
                                                 f"this run names {t.checkpoint}")
        need(made["samples"] >= _samples(cfg), f"teacher cache {t.cache} covers {made['samples']} samples "
                                                  f"but this run trains on {_samples(cfg)}")
        why = check_kd(cfg.kd, made["top_k"], made["sampled"])
        need(why is None, f"teacher cache {t.cache}: {why}")
        notes.append(f"cache {t.cache} ({made['samples']} samples) serves it")
    elif t.checkpoint:
        need(state.exists(t.checkpoint), f"teacher.checkpoint '{t.checkpoint}' does not exist after `make demo`")
        notes.append(f"teacher {t.checkpoint} exists")
        if t.model:  # the teacher is split over the student's layout
            validate_model_layout(load_config(t.model, purpose="model").model, cfg.parallel, "teacher")
    if cfg.checkpoint.load:
        need(state.exists(cfg.checkpoint.load), f"checkpoint.load {cfg.checkpoint.load} was not written here")
    if cmd == "init":
        state.make_dir(_option(words, "--out"), "mkd " + " ".join(words))
    elif cmd == "train":
        state.make_dir(cfg.run.dir, "mkd " + " ".join(words))
    return "; ".join(notes)


def check_run_dir_as_a_run_would(cfg, words: list[str], state: State) -> None:
    """A second shown `mkd train` into the run.dir of an earlier one: refused when it is another
    run (training/run_dir.check_run_dir, on the config.yaml the earlier run wrote), a no-op when it
    resumes a run already as long. Then this run's config.yaml is written, as a run's start does."""
    import yaml

    from megatron_kd.config.loader import config_to_dict
    from megatron_kd.config.validate import train_steps
    from megatron_kd.training.run_dir import check_run_dir

    saved = state.root / cfg.run.dir / "config.yaml"
    if saved.is_file() and "--overwrite" not in words:
        check_run_dir(cfg, overwrite=False, delete=False)
        before = state.validated.get(cfg.run.dir, "an earlier command")
        need(state.steps.get(cfg.run.dir, 0) < train_steps(cfg),
             f"run.dir {cfg.run.dir} holds the finished run of `{before}`: this one resumes it and trains "
             "nothing; give it its own run.dir")
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    state.steps[cfg.run.dir] = train_steps(cfg)


def dry(words: list[str], state: State) -> str:
    if words[0] == "sweep":
        rest = [w for w in words if w not in ("--local", "--slurm")]
        if "--stream" in rest:  # a --slurm option: the streaming it asks for needs the scheduler
            i = rest.index("--stream")
            del rest[i:i + 2]
        rc = _main(rest)
        need(rc == 0, f"`mkd {' '.join(rest)}` exited {rc}")
        return "sweep expanded, recipes written"
    dirs = [w for w in words[1:] if not w.startswith("-") and w.startswith("runs/")]
    for d in dirs:
        need(d in MADE_BY and state.exists(d), f"mkd {words[0]}: {d} is not a directory a make target leaves")
    return f"reads {', '.join(f'{d} (after {MADE_BY[d]})' for d in dirs)}"


def run_line(line: str, state: State) -> str:
    how = rule(line)
    words = _words(line)
    if how == "skip":
        return how
    if how == "parse":
        from megatron_kd.cli.main import parse

        ns = parse(words)
        if getattr(ns, "recipe", None) and getattr(ns, "overrides", None) is not None and not ns.recipe.startswith(
                ("/", "ckpts/")):
            from megatron_kd.config.loader import load_config
            from megatron_kd.config.validate import validate as validate_layout

            cfg = load_config(ns.recipe, [*ns.overrides, *(["teacher.cache=null"] if words[0] == "teacher-cache"
                                                            else [])])
            validate_layout(cfg, int(_option(words, "--nproc") or 1))
            return f"{how}: config resolved at the command's world size"
        return how
    if how == "validate":
        return f"{how}: {validate(words, state)}"
    if how == "dry":
        return f"{how}: {dry(words, state)}"
    rc = _main(words)
    need(rc == 0, f"exited {rc}")
    return how


@pytest.mark.slow  # builds the real corpus and validates ~50 commands: ~30 s
def test_shown_commands_run_after_make_demo(user_dir, monkeypatch, capsys):
    monkeypatch.chdir(user_dir)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    state = State(user_dir)
    failed, report, n = [], [], 0
    for page in _ordered_pages():
        for line, comment in page_commands(page):
            n += 1
            try:
                how = "run (first, as `make demo` does: the corpus later pages read)" if line == CORPUS \
                    else run_line(line, state)
            except Failed as exc:
                how = f"FAILED: {exc}"
            except SystemExit as exc:  # the CLI's one-line argument errors
                how = f"FAILED: exit {exc.code}"
            except Exception as exc:  # noqa: BLE001 (every failure is reported with its line)
                how = f"FAILED: {type(exc).__name__}: {exc}"
            printed = capsys.readouterr()
            err = [e for e in printed.err.splitlines() if e.startswith("mkd: error")]
            claims = unquoted_claims(comment, printed.out + printed.err) if how.startswith("run") else []
            if claims and not how.startswith("FAILED"):
                how = f"FAILED: the comment says {', '.join(claims)}; the output does not show it"
            known = KNOWN_FAILURES.get((page.name, line))
            if how.startswith("FAILED") or err:
                how = f"FAILED: {err[-1]}" if err else how
                if known:
                    how = f"known failure ({known}): {how}"
                else:
                    failed.append(f"{page.name}: {line}\n      {how}")
            elif known:
                how = f"{how} (listed in KNOWN_FAILURES but passes now: remove it there)"
            report.append(f"{page.name:18} {how[:110]:110} | {line}")
    with capsys.disabled():
        print("\n" + "\n".join(report))
    assert n >= 40, f"only {n} shown mkd commands found: is the block syntax still ```bash?"
    assert not failed, "shown commands that fail:\n  " + "\n  ".join(failed)


def page_transcripts(page: Path) -> list[tuple[str, list[str]]]:
    """`$ mkd ...` lines of a page's plain blocks with the output quoted under each."""
    out = []
    for lang, block in re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), flags=re.S | re.M):
        for chunk in re.split(r"^(?=\$ mkd )", block, flags=re.M):
            if not lang and chunk.startswith("$ mkd "):
                line, *quoted = chunk.strip().splitlines()
                out.append((line[2:], quoted))
    return out


@pytest.mark.slow  # shares the corpus the module's fixture builds
def test_quoted_output_is_what_the_command_prints(user_dir, monkeypatch, capsys):
    """Commands shown with their output (`$ mkd ...` and the lines under it) print that output;
    `...` in a quoted line stands for any text (an absolute path)."""
    monkeypatch.chdir(user_dir)
    seen, wrong = 0, []
    for page in _ordered_pages():
        for line, quoted in page_transcripts(page):
            seen += 1
            capsys.readouterr()
            try:
                _main(_words(line))
            except SystemExit:
                pass
            printed = [x for x in "".join(capsys.readouterr()).splitlines() if x.strip()]
            for q in quoted:
                pattern = ".*".join(re.escape(part) for part in q.split("..."))
                if not any(re.fullmatch(pattern, x) for x in printed):
                    wrong.append(f"{page.name}: {line}\n      quoted: {q}\n      printed: {printed[-3:]}")
    assert seen >= 2, f"only {seen} quoted transcripts found"
    assert not wrong, "quoted output that the command does not print:\n  " + "\n  ".join(wrong)
