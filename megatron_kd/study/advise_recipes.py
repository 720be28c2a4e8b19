"""`mkd advise --write-recipes DIR`: the recipes that carry a recommendation out.

The law speaks in parameter counts; recipes are architectures. So the candidates come from
model recipes (`--student-recipe`, `--teacher-recipe`: their sizes, counted as the law counts
them, are the sizes `mkd advise` weighs: by default FLOP parameters, models/flops.flop_params at
the law's sequence length, else the base recipe's train.seq_length), and the recommendation's
sizes map back to those recipes. What is written, each a full resolved recipe on top of `--base`:

- supervised:        student.yaml (the student alone for the tokens the budget buys);
- existing teacher:  kd.yaml (teacher.checkpoint = the --teacher-checkpoint given);
- train a teacher:   teacher.yaml (the teacher for its tokens) and kd.yaml, whose teacher is the
                     teacher run's directory: `mkd train DIR/teacher.yaml`, then `mkd train DIR/kd.yaml`.

Every value goes in as an override that reads back as exactly that value (config/overrides.py:
a directory named `out #1` stays `out #1`). Each file starts with MARKER; an existing file without
it is never replaced, one with it only with --overwrite, all checked before any file is written.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from megatron_kd.config import load_config, validate
from megatron_kd.config.loader import config_to_dict
from megatron_kd.config.overrides import override
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic
from megatron_kd.models.flops import flop_params
from megatron_kd.models.params import count_parameters

# The first line of every recipe written here: how a later --write-recipes knows a file is its own.
MARKER = "# written by `mkd advise --write-recipes` (megatron_kd.advise-recipe/1)\n"


def recipe_size(recipe: str, parameters: str, seq_length: int | None = None) -> float:
    """A model recipe's size as the law counts it: FLOP parameters at `seq_length` ("flop"), or
    non-embedding or total parameters."""
    model = load_config(recipe, purpose="model").model
    if parameters == "flop":
        if seq_length is None:
            raise ConfigError(f"counting {recipe}'s FLOP parameters needs a sequence length (attention's share "
                              "depends on it): the law records none; give --base RECIPE (its train.seq_length) "
                              "or refit with `mkd fit --seq-length S`")
        return flop_params(model, seq_length)
    count = count_parameters(model)
    return float(count.non_embedding if parameters == "non-embedding" else count.total)


def seq_length_for(law_seq: int | None, base: str | None) -> int | None:
    """The sequence length recipes are counted at: the law's (its N was counted there), else the
    base recipe's train.seq_length, else None."""
    if law_seq is not None:
        return law_seq
    return load_config(base).train.seq_length if base else None


def _by_size(recipes: dict[str, float], n: float, what: str) -> str:
    for recipe, size in recipes.items():
        if abs(size - n) <= 1e-9 * max(size, 1.0):
            return recipe
    raise ConfigError(f"the recommended {what} ({n:.3g} parameters) is none of the recipes given; pass its "
                      f"model recipe with --{what}-recipe")


def _resolved(base: str, model_recipe: str, values: dict) -> str:
    """The recipe's YAML text: `base` with `values` set (each an override that reads back as exactly
    that value: a path with ` #` or `: ` in it stays the path) and the model swapped in."""
    cfg = load_config(base, [override(k, v) for k, v in values.items()])
    cfg.model = load_config(model_recipe, purpose="model").model
    validate(cfg)  # the student swapped in: heads vs TP and the rest checked again
    return MARKER + yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def _written_here(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline() == MARKER
    except (OSError, UnicodeDecodeError):
        return False


def _check_targets(out: Path, names: list[str], overwrite: bool) -> None:
    """Nothing is replaced that this command did not write; its own recipes only with `overwrite`."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--write-recipes {out} is a file; give a directory")
    for name in names:
        path = out / name
        if path.is_symlink() or path.is_dir() or (path.exists() and not _written_here(path)):
            raise ConfigError(f"{path} exists and was not written by `mkd advise --write-recipes`; it is left as "
                              "it is: choose another --write-recipes DIR or move it away")
        if path.exists() and not overwrite:
            raise ConfigError(f"{path} exists (an earlier recommendation's); pass --overwrite to replace it, or "
                              "choose another --write-recipes DIR")


def _check_path(flag: str, value) -> None:
    if "\n" in str(value) or "\r" in str(value):  # a recipe's path on two lines is a typo, not a path
        raise ConfigError(f"{flag} {str(value)[:80]!r} has a line break in it; give a path on one line")


def write_recipes(option, out: Path, base: str, students: dict[str, float], teachers: dict[str, float],
                  teacher_checkpoint: str | None, overwrite: bool = False) -> list[Path]:
    """The recipes of `option` (an advise.Option) in `out`; returns their paths. Refuses, before
    writing anything, what it cannot map to a recipe and files it would replace."""
    student = _by_size(students, option.N_S, "student")
    teacher = _by_size(teachers, option.N_T, "teacher") if option.kind == "train a teacher" else None
    if option.kind == "existing teacher" and not teacher_checkpoint:
        raise ConfigError("the recommendation distils from the existing teacher: give its checkpoint with "
                          "--teacher-checkpoint PATH so kd.yaml can name it")
    _check_path("--write-recipes", out)
    _check_path("--teacher-checkpoint", teacher_checkpoint or "")
    runs = out / "runs"
    alone = {"kd.alpha": 0, "teacher.checkpoint": None, "teacher.cache": None, "teacher.model": None,
             "teacher.unigram": False}

    def length(tokens: float) -> dict:
        return {"train.steps": None, "train.tokens": int(round(tokens))}

    texts = {}  # file name -> text, all built (and validated) before any is written
    if option.kind == "supervised":
        texts["student.yaml"] = _resolved(base, student, {"run.name": "student", "run.dir": str(runs / "student"),
                                                          **alone, **length(option.D_S)})
    else:
        if teacher is not None:
            teacher_dir = str(runs / "teacher")
            texts["teacher.yaml"] = _resolved(base, teacher, {"run.name": "teacher", "run.dir": teacher_dir, **alone,
                                                              **length(option.D_T)})
            source = {"teacher.checkpoint": teacher_dir, "teacher.model": teacher}
        else:
            source = {"teacher.checkpoint": str(teacher_checkpoint), "teacher.model": None}
        texts["kd.yaml"] = _resolved(base, student, {"run.name": "kd", "run.dir": str(runs / "kd"),
                                                     "kd.alpha": float(option.alpha), "teacher.cache": None,
                                                     "teacher.unigram": False, **source, **length(option.D_S)})
    _check_targets(out, list(texts), overwrite)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        write_text_atomic(out / name, text)
    return [out / name for name in texts]


def run_order_lines(written: list[Path]) -> list[str]:
    """What to print after writing: every recipe written, each as the `mkd train` command that runs
    it, numbered in the order they must run (a teacher before the KD run that reads its directory)."""
    if len(written) == 1:
        return [f"recipe written: {written[0]}; run it with: mkd train {shlex.quote(str(written[0]))}"]
    lines = [f"{len(written)} recipes written; run them in this order, each after the one before has finished:"]
    lines += [f"  {i}. mkd train {shlex.quote(str(path))}" for i, path in enumerate(written, 1)]
    return lines
