"""`mkd advise --write-recipes DIR`: the recipes that carry a recommendation out.

The law speaks in parameter counts; recipes are architectures. So the candidates come from
model recipes (`--student-recipe`, `--teacher-recipe`: their sizes, counted as the law counts
them, are the sizes `mkd advise` weighs), and the recommendation's sizes map back to those
recipes. What is written, each a full resolved recipe on top of `--base`:

- supervised:        student.yaml (the student alone for the tokens the budget buys);
- existing teacher:  kd.yaml (teacher.checkpoint = the --teacher-checkpoint given);
- train a teacher:   teacher.yaml (the teacher for its tokens) and kd.yaml, whose teacher is the
                     teacher run's directory: `mkd train DIR/teacher.yaml`, then `mkd train DIR/kd.yaml`.
"""

from __future__ import annotations

from pathlib import Path

from megatron_kd.config import dump_config, load_config, validate
from megatron_kd.errors import ConfigError
from megatron_kd.models.params import count_parameters


def recipe_size(recipe: str, parameters: str) -> float:
    """A model recipe's size as the law counts it (non-embedding or total parameters)."""
    count = count_parameters(load_config(recipe, purpose="model").model)
    return float(count.non_embedding if parameters == "non-embedding" else count.total)


def _by_size(recipes: dict[str, float], n: float, what: str) -> str:
    for recipe, size in recipes.items():
        if abs(size - n) <= 1e-9 * max(size, 1.0):
            return recipe
    raise ConfigError(f"the recommended {what} ({n:.3g} parameters) is none of the recipes given; pass its "
                      f"model recipe with --{what}-recipe")


def _write(base: str, model_recipe: str, overrides: list[str], path: Path) -> Path:
    cfg = load_config(base, overrides)
    cfg.model = load_config(model_recipe, purpose="model").model
    validate(cfg)  # the student swapped in: heads vs TP and the rest checked again
    dump_config(cfg, path)
    return path


def write_recipes(option, out: Path, base: str, students: dict[str, float], teachers: dict[str, float],
                  teacher_checkpoint: str | None) -> list[Path]:
    """The recipes of `option` (an advise.Option) in `out`; returns their paths. Refuses, before
    writing anything, what it cannot map to a recipe."""
    student = _by_size(students, option.N_S, "student")
    teacher = _by_size(teachers, option.N_T, "teacher") if option.kind == "train a teacher" else None
    if option.kind == "existing teacher" and not teacher_checkpoint:
        raise ConfigError("the recommendation distils from the existing teacher: give its checkpoint with "
                          "--teacher-checkpoint PATH so kd.yaml can name it")
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    length = lambda tokens: ["train.steps=null", f"train.tokens={int(round(tokens))}"]  # noqa: E731
    if option.kind == "supervised":
        return [_write(base, student, ["run.name=student", f"run.dir={runs / 'student'}", "kd.alpha=0",
                                       "teacher.checkpoint=null", "teacher.cache=null", "teacher.model=null",
                                       "teacher.unigram=false", *length(option.D_S)],
                       out / "student.yaml")]
    written = []
    if teacher is not None:
        teacher_dir = runs / "teacher"
        written.append(_write(base, teacher, ["run.name=teacher", f"run.dir={teacher_dir}", "kd.alpha=0",
                                              "teacher.checkpoint=null", "teacher.cache=null", "teacher.model=null",
                                              "teacher.unigram=false", *length(option.D_T)], out / "teacher.yaml"))
        source = [f"teacher.checkpoint={teacher_dir}", f"teacher.model={teacher}"]
    else:
        source = [f"teacher.checkpoint={teacher_checkpoint}", "teacher.model=null"]
    written.append(_write(base, student, ["run.name=kd", f"run.dir={runs / 'kd'}", f"kd.alpha={option.alpha}",
                                          "teacher.cache=null", "teacher.unigram=false", *source, *length(option.D_S)],
                          out / "kd.yaml"))
    return written
