"""Sweeps: a grid over teacher × student × α × temperature × KD kind/top-k (any subset), plus
the no-KD baseline of each student, expanded into one resolved recipe per point.

Sweep YAML:

    name: cpu-mini
    base: kd/_cpu_base              # the training recipe every point starts from
    out: runs/sweeps/cpu-mini       # sweep directory (recipes/, runs/, results)
    overrides: [train.steps=200]    # applied to every point
    seeds: [1234]                   # several seeds: one run per seed (noise bands)
    baseline: true                  # the no-KD run of each student
    baseline_seeds: [1235]          # extra baseline seeds only (a cheaper noise band)
    baseline_steps: [100, 400]      # baselines at other lengths, each seed: the supervised
                                    # frontier `mkd report` compares KD's total compute with
    auto_ceiling: 1.0               # kd.alpha of grid.alpha's `auto` points (default 1.0)
    grid:
      student: [models/cpu-small]               # model recipes
      steps: [100, 200, 400]                    # student budgets: each student at each length, its
                                                # own schedule (the student is then `small-200steps`)
      teacher:                                  # explicit teachers ...
        - {name: tiny-300, checkpoint: runs/teachers/cpu-tiny/checkpoints/tokens_614400,
           model: models/cpu-tiny, tokens: 614400}
      teacher_grid:                             # ... and/or a models x token budgets product
        models: {0.5b: models/llama3-0.5b}
        tokens: [5e9, 50e9]
        checkpoint: runs/teachers/{model}/checkpoints/tokens_{tokens}
      alpha: [0.2, 0.5, 1.0, auto]              # auto: one kd.auto point per teacher (α set by
                                                # the run; kd.alpha = the sweep's auto_ceiling, 1.0)
      alpha_schedule:                           # extra points per teacher: α over training
        - {alpha: 1.0, kind: cosine, final: 0.0}  # kd.alpha + kd.alpha_schedule.*
      temperature: [1.0]
      kind: [forward_kl]
      top_k: [null]

The work is split by what it does: sweep_spec.py checks the YAML's shape, sweep_grid.py loads and
expands it, sweep_recipes.py writes the points' recipes, sweep_teachers.py evaluates the teachers,
sweep_local.py runs the points here (cli/sweep_jobs.py submits them to Slurm); this module names
their public functions in one place.
"""

from megatron_kd.study.sweep_grid import Point, check_size, expand, grid_size, load_sweep, select, teacher_points
from megatron_kd.study.sweep_local import build_caches, finished, run_followed, run_local
from megatron_kd.study.sweep_recipes import PRIMARY_FILE, cache_recipe, resolve_point, write_recipes
from megatron_kd.study.sweep_spec import cache_args, check_types
from megatron_kd.study.sweep_teachers import evaluate_teachers

__all__ = ["PRIMARY_FILE", "Point", "build_caches", "cache_args", "cache_recipe", "check_size", "check_types",
           "evaluate_teachers", "expand", "finished", "grid_size", "load_sweep", "resolve_point", "run_followed",
           "run_local", "select", "teacher_points", "write_recipes"]
