"""Runs the bad-input catalogue (tests/cli/test_bad_input.py) through `mkd`'s real entry point,
case after case, in one process (each case fails before any process group starts, so they do
not disturb each other; one interpreter saves ~4 s of imports per case).

    python -m tests.workers.bad_input ARTIFACTS.json RESULTS.json

For each case: the exit code `main()` returns (or argparse's SystemExit code), what it printed,
whether an exception escaped (a traceback), and whether the case's run directory appeared.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from pathlib import Path


def case_makers(a: dict):
    """(run, data, t, td) shared by both rounds of the catalogue: a fresh run dir under
    tmp/runs, the corpus overrides, and a `mkd train` case on mock data / on the corpus."""
    run = lambda name: f"run.dir={a['tmp']}/runs/{name}"  # noqa: E731
    data = ["data.mock=false", f"data.tokenizer={a['tokenizer']}", f"data.train=[{a['train']}]",
            f"data.valid={{indomain: {a['valid']}}}", "model.vocab_size=512"]
    t = lambda name, *o: {"argv": ["train", "train/tiny-mock", run(name), *o]}  # noqa: E731
    td = lambda name, *o: t(name, *data, *o)  # noqa: E731
    return run, data, t, td


def cases(a: dict) -> dict[str, dict]:
    """id -> {argv, env?}. `a`: the artifacts made by the test's fixture (paths)."""
    run, data, t, td = case_makers(a)
    kd = lambda name, *o: td(name, f"teacher.checkpoint={a['teacher']}", *o)  # noqa: E731
    return {
        "unknown_key": t("c1", "train.stpes=3"),
        "wrong_type": t("c2", "train.steps=ten"),
        "alpha_out_of_range": t("c3", "kd.alpha=1.5"),
        "temperature_not_positive": t("c4", "kd.temperature=0"),
        "top_k_not_positive": t("c5", "kd.top_k=0"),
        "top_p_above_one": t("c6", "kd.top_p=1.5"),
        "heads_not_divisible_by_tp": t("c7", "parallel.tp=3"),
        "layers_not_divisible_by_pp": t("c8", "parallel.pp=3"),
        "world_size_mismatch": {"argv": ["train", "train/tiny-mock", run("c9"), "parallel.tp=2",
                                         "--nproc", "3"]},
        "seq_length_above_max": t("c10", "train.seq_length=512"),
        "missing_data_prefix": t("c11", *data[:2], "data.train=[/nonexistent/corpus/train]",
                                 "model.vocab_size=512"),
        "empty_dataset": t("c12", *data[:2], f"data.train=[{a['empty']}]", "model.vocab_size=512"),
        "corrupt_idx": t("c13", *data[:2], f"data.train=[{a['corrupt_idx']}]", "model.vocab_size=512"),
        "truncated_bin": t("c14", *data[:2], f"data.train=[{a['truncated_bin']}]", "model.vocab_size=512"),
        "data_from_another_tokenizer": t("c15", f"data.tokenizer={a['other_tokenizer']}",
                                         "data.mock=false", f"data.train=[{a['train']}]",
                                         "model.vocab_size=512"),
        "missing_teacher": td("c16", "teacher.checkpoint=/nonexistent/teacher"),
        "teacher_of_another_architecture": kd("c17", "teacher.model=models/cpu-small"),
        "teacher_student_tokenizer_mismatch": t("c18", "data.mock=false",
                                                f"data.tokenizer={a['other_tokenizer']}",
                                                f"data.train=[{a['other_train']}]", "model.vocab_size=512",
                                                f"teacher.checkpoint={a['teacher']}"),
        "truncated_checkpoint_load": td("c19", f"checkpoint.load={a['truncated_ckpt']}"),
        "truncated_teacher_checkpoint": td("c20", f"teacher.checkpoint={a['truncated_ckpt']}"),
        "run_dir_holds_another_run": {"argv": ["train", "train/tiny-mock", f"run.dir={a['teacher']}",
                                               *data, "train.lr=0.5"]},
        "fp8_without_transformer_engine": t("c22", "precision.dtype=bf16", "precision.fp8=hybrid"),
        "unsupported_hf_architecture": {"argv": ["convert", "hf-to-mcore", a["gpt2_dir"],
                                                 f"{a['tmp']}/runs/c23"]},
        "empty_sweep_grid": {"argv": ["sweep", a["empty_sweep"]]},
        "slurm_missing": {"argv": ["sweep", a["one_point_sweep"], "--slurm"], "env": {"PATH": "/nonexistent"}},
        "unwritable_run_dir": t("c26", "run.dir=/proc/mkd-unwritable/run"),
        "yaml_syntax_error": {"argv": ["train", a["bad_yaml"], run("c27")]},
        "unknown_sweep_key": {"argv": ["sweep", a["bad_sweep_key"]]},
        "sweep_only_matches_nothing": {"argv": ["sweep", a["one_point_sweep"], "--only", "nothing*"]},
        "fused_with_magnitude_matched": t("c30", "kd.fused_output_layer=true", "kd.mix=magnitude_matched"),
        "eval_missing_checkpoint": {"argv": ["eval", "/nonexistent/ckpt"]},
        "report_without_runs": {"argv": ["report", f"{a['tmp']}/empty-sweep-dir"]},
        "unknown_command_option": {"argv": ["train", "train/tiny-mock", run("c33"), "--nrpoc", "2"]},
    }


def run_case(case: dict) -> dict:
    from megatron_kd.cli.main import main

    saved_env = {k: os.environ.get(k) for k in case.get("env", {})}
    os.environ.update(case.get("env", {}))
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(case["argv"]))
            except SystemExit as exc:  # argparse's usage errors
                rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # an exception escaped main(): a traceback a user would see
        rc = 1
        escaped = traceback.format_exc()
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "escaped": escaped}


def _main() -> None:
    artifacts = json.loads(Path(sys.argv[1]).read_text())
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        os.environ.pop(k, None)  # a plain single-process launch
    results = {}
    for name, case in cases(artifacts).items():
        results[name] = run_case(case)
        results[name]["argv"] = case["argv"]
    Path(sys.argv[2]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    _main()
