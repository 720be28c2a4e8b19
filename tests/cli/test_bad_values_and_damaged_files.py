"""The bad-input catalogue of values and damaged files: non-finite and out-of-range numbers,
unsafe run directories, YAML duplicate keys and alias bombs, edited or bit-flipped checkpoints
and state files, token ids beyond the vocabulary, malformed rank environments, sweep, report,
convert, plan and submit inputs, and settings this machine cannot run. Each is held to the rules
of tests/cli/test_bad_input.py: the exit code, exactly one `error:` line of bounded length
naming the problem and the fix, no traceback, nothing created, the neighbouring teacher run and
the damaged inputs themselves untouched (hash)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_kd.checkpoint.refs import read_state
from megatron_kd.data.datasets import read_index
from tests.distributed import REPO
from tests.helpers import ENV, copy_prefix, tree_digest
from tests.workers.bad_values_and_damaged_files import _bomb

pytestmark = pytest.mark.slow

# id -> (exit code, text the one error line must contain)
EXPECTED = {
    "lr_inf": (2, "train.lr must be a finite number, got inf"),
    "lr_nan": (2, "train.lr must be a finite number, got nan"),
    "temperature_inf": (2, "kd.temperature must be a finite number"),
    "alpha_nan": (2, "kd.alpha must be a finite number"),
    "min_lr_ratio_nan": (2, "train.min_lr_ratio must be a finite number"),
    "clip_grad_inf": (2, "train.clip_grad must be a finite number"),
    "alpha_schedule_final_nan": (2, "kd.alpha_schedule.final must be a finite number"),
    "global_batch_zero": (2, "train.global_batch_size must be >= 1, got 0"),
    "global_batch_negative": (2, "train.global_batch_size must be >= 1, got -4"),
    "adam_beta1_one": (2, "train.adam_beta1 and train.adam_beta2 must be in [0, 1)"),
    "adam_beta2_negative": (2, "train.adam_beta1 and train.adam_beta2 must be in [0, 1)"),
    "adam_eps_zero": (2, "train.adam_eps must be > 0"),
    "weight_decay_negative": (2, "train.weight_decay must be >= 0"),
    "hidden_dropout_above_one": (2, "model.hidden_dropout must be in [0, 1], got 1.5"),
    "attention_dropout_negative": (2, "model.attention_dropout must be in [0, 1]"),
    "seed_negative": (2, "run.seed must be in [0, 4294967295], got -1"),
    "seed_too_big": (2, "run.seed must be in [0, 4294967295]"),
    "data_seed_negative": (2, "data.seed must be in [0, 4294967295]"),
    "steps_beyond_dataset_index": (2, "a dataset index can hold"),
    "steps_zero": (2, "train.steps must be >= 1, got 0"),
    "steps_negative": (2, "train.steps must be >= 1, got -3"),
    "tokens_zero": (2, "train.tokens must be >= 1, got 0"),
    "warmup_negative": (2, "train.warmup_steps must be >= 0"),
    "max_skips_negative": (2, "train.max_consecutive_skips must be >= 0"),
    "jsd_beta_one": (2, "kd.jsd_beta must be in (0, 1)"),
    "other_bucket_without_truncation": (2, "kd.other_bucket needs kd.top_k or kd.top_p"),
    "top_k_and_top_p": (2, "kd.top_k and kd.top_p are exclusive"),
    "temperature_schedule_final_zero": (2, "kd.temperature_schedule.final must be > 0"),
    "norm_epsilon_zero": (2, "model.norm_epsilon must be > 0"),
    "run_dir_root": (2, "run.dir=/ is the file system root"),
    "run_dir_empty": (2, "run.dir is empty"),
    "run_dir_home": (2, "is your home directory"),
    "run_dir_in_recipes": (2, "is inside the recipes"),
    "run_dir_in_package": (2, "is inside the megatron_kd package"),
    "run_dir_cwd": (2, "is the working directory"),
    "run_dir_newline": (2, "run.dir contains the control character '\\n'"),
    "run_name_tab": (2, "run.name contains the control character '\\t'"),
    "run_dir_locked": (2, "is in use by a running mkd train (pid 4242)"),
    "overwrite_would_delete_teacher": (2, "--overwrite would delete"),
    "overwrite_would_delete_checkpoint_load": (2, "(checkpoint.load), which this run reads"),
    "yaml_duplicate_key": (2, "key 'steps' appears twice in one mapping (lines 3 and 4)"),
    "yaml_duplicate_section": (2, "key 'train' appears twice in one mapping (lines 2 and 4)"),
    "yaml_alias_bomb": (2, "aliases expand to more than 100,000 values"),
    "yaml_alias_bomb_in_override": (2, "aliases expand to more than 100,000 values"),
    "yaml_recursive_alias": (2, "an alias refers to itself"),
    "huge_value_in_error": (2, "more characters)"),
    "state_file_empty_object": (2, "has no 'step'"),
    "state_file_wrong_type": (2, "has 'step': \"two\", not int"),
    "state_file_edited": (2, "was edited after the save"),
    "checkpoint_bytes_flipped": (2, "does not match the checksum written with it"),
    "teacher_bytes_flipped": (2, "does not match the checksum written with it"),
    "latest_names_another_run": (2, "not a checkpoint of this run"),
    "eval_state_empty": (2, "has no 'step'"),
    "eval_latest_names_another_run": (2, "not a checkpoint of this run"),
    "eval_checkpoint_bytes_flipped": (2, "does not match the checksum"),
    "analyze_teacher_bytes_flipped": (2, "does not match the checksum"),
    "token_ids_beyond_vocabulary": (2, "token id 518 in"),
    "valid_token_ids_beyond_vocabulary": (2, "is not below the tokenizer's vocabulary of 512"),
    "rank_not_an_integer": (2, "environment variable RANK='abc' is not an integer"),
    "world_size_zero": (2, "WORLD_SIZE='0' is not an integer >= 1"),
    "rank_not_below_world_size": (2, "RANK=3 is not below WORLD_SIZE=2"),
    "slurm_procid_garbage": (2, "SLURM_PROCID='x' is not an integer"),
    "nproc_zero": (2, "--nproc must be >= 1"),
    "sweep_grid_axis_not_a_list": (2, "`grid.alpha` must be a list of numbers"),
    "sweep_teacher_not_a_mapping": (2, "`grid.teacher` must be a list of {name, checkpoint, model}"),
    "sweep_seeds_not_integers": (2, "`seeds` must be a list of integers"),
    "sweep_teacher_grid_bad_pattern": (2, "grid.teacher_grid is malformed"),
    "sweep_duplicate_key": (2, "key 'grid' appears twice"),
    "sweep_bad_point_writes_nothing": (2, "train.lr must be a finite number"),
    "sweep_grid_not_a_mapping": (2, "`grid` must be a mapping"),
    "report_points_not_a_list": (2, "holds a JSON dict, not a list"),
    "report_points_not_json": (2, "is not valid JSON"),
    "report_metrics_line_corrupt": (2, "metrics.jsonl:1 is not a JSON object"),
    "convert_config_json_malformed": (2, "is not valid JSON"),
    "convert_config_json_a_list": (2, "holds a JSON list, not a dict"),
    "check_pair_config_json_malformed": (2, "is not valid JSON"),
    "plan_gpus_zero": (2, "--gpus must be >= 1, got 0"),
    "plan_memory_nan": (2, "--gpu-memory-gb must be a positive number, got nan"),
    "plan_memory_negative": (2, "--gpu-memory-gb must be a positive number"),
    "plan_lr_inf": (2, "train.lr must be a finite number"),
    "submit_job_name_newline": (2, "--job-name must be one line"),
    "submit_run_dir_newline": (2, "run.dir contains the control character"),
    "submit_partition_escape": (2, "--partition must be one line"),
    "submit_nodes_zero": (2, "a job needs --nodes >= 1"),
    "config_lr_inf": (2, "train.lr must be a finite number"),
    "config_run_dir_root": (2, "run.dir=/ is the file system root"),
    "config_yaml_duplicate_key": (2, "appears twice in one mapping"),
    "info_dropout_above_one": (2, "model.hidden_dropout must be in [0, 1], got 2"),
    "overlap_param_gather_on_cpu": (3, "parallel.overlap_param_gather needs CUDA"),
    "overlap_param_gather_without_dist_opt": (2, "needs parallel.distributed_optimizer=true"),
    "teacher_fp8_on_cpu": (3, "teacher.fp8=hybrid needs Transformer Engine"),
    "recompute_layers_not_dividing": (2, "train.recompute_layers=3 must divide the 2 layers"),
    "recompute_unknown": (2, "train.recompute"),
    "teacher_dtype_with_pp": (2, "teacher.dtype=bf16 differs from precision.dtype=fp32"),
    "profile_steps_negative": (2, "--profile-steps must be >= 0"),
    "bucket_size_zero": (2, "parallel.ddp_bucket_size must be >= 1"),
}


def _checkpoint_copy(src: Path, dst: Path, edit=None) -> str:
    shutil.copytree(src, dst)
    if edit:
        state = json.loads((dst / "mkd_state.json").read_text())
        edit(state)
        (dst / "mkd_state.json").write_text(json.dumps(state))
    return str(dst)


@pytest.fixture(scope="module")
def damaged_inputs(catalogue_inputs):
    """tests/cli/conftest.py's catalogue inputs, and beside them (in values_and_files/) the
    damaged checkpoints, data, recipes, sweeps and reports of this catalogue."""
    tmp = Path(catalogue_inputs["tmp"]) / "values_and_files"
    tmp.mkdir()
    a = dict(catalogue_inputs, home=str(Path.home()))
    teacher = Path(a["teacher"])
    ckpt = next(p for p in sorted((teacher / "checkpoints").iterdir()) if p.is_dir() and not p.is_symlink())
    a["teacher_ckpt"] = str(ckpt)
    a["state_empty"] = _checkpoint_copy(ckpt, tmp / "state_empty")
    (tmp / "state_empty" / "mkd_state.json").write_text("{}")
    a["state_wrong_type"] = _checkpoint_copy(ckpt, tmp / "state_wrong_type", lambda s: s.update(step="two"))
    a["state_edited"] = _checkpoint_copy(ckpt, tmp / "state_edited",
                                         lambda s: s.update(padded_vocab_size=s["padded_vocab_size"] + 128))
    a["bitflip"] = _checkpoint_copy(ckpt, tmp / "bitflip")
    shard = max((Path(a["bitflip"])).rglob("*.distcp"), key=lambda p: p.stat().st_size)
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    other = tmp / "latest_other"
    shutil.copytree(teacher, other)
    (other / "checkpoints" / "latest").write_text(f"../../../{teacher.name}/checkpoints/{ckpt.name}")
    a["latest_other"] = str(other)
    a["locked_dir"] = str(tmp.parent / "locked")  # outside values_and_files/: the lock file appears in it
    os.makedirs(a["locked_dir"])
    # a .bin with a token id beyond the 512-piece vocabulary
    a["big_ids"] = copy_prefix(a["train"], tmp / "big_ids")
    _, dtype_size, _ = read_index(Path(a["train"] + ".idx"), "train")
    with open(a["big_ids"] + ".bin", "r+b") as f:
        f.seek(dtype_size * 10)
        f.write((511 + 7).to_bytes(dtype_size, "little"))
    # recipes and sweeps
    (tmp / "dup_key.yaml").write_text("base: train/tiny-mock\ntrain:\n  steps: 3\n  steps: 4\n")
    (tmp / "dup_section.yaml").write_text("base: train/tiny-mock\ntrain:\n  steps: 3\ntrain:\n  lr: 0.1\n")
    (tmp / "bomb.yaml").write_text("base: train/tiny-mock\nlogging: {x: " + _bomb() + "}\n")
    (tmp / "recursive.yaml").write_text("base: train/tiny-mock\ntrain: &a\n  x: *a\n")
    for name in ("dup_key", "dup_section", "bomb", "recursive"):
        a[f"{name}_yaml"] = str(tmp / f"{name}.yaml")
    sweep = {"name": "s", "base": "train/tiny-mock", "out": f"{a['tmp']}/runs/sweep-out"}
    sweeps = {"sweep_axis_scalar": {"grid": {"alpha": 0.5, "teacher": [{"checkpoint": a["teacher"]}]}},
              "sweep_teacher_str": {"grid": {"teacher": ["teacher-a"]}},
              "sweep_seed_str": {"seeds": ["a"], "baseline": True},
              "sweep_bad_pattern": {"grid": {"teacher_grid": {"models": {"m": "models/tiny"}, "tokens": [1000],
                                                              "checkpoint": "runs/{foo}"}}},
              "sweep_bad_point": {"baseline": True, "overrides": ["train.lr=inf"]},
              "sweep_grid_list": {"grid": ["alpha"]}}
    for name, extra in sweeps.items():
        (tmp / f"{name}.yaml").write_text(json.dumps({**sweep, **extra}))
        a[name] = str(tmp / f"{name}.yaml")
    (tmp / "sweep_dup.yaml").write_text("name: s\nbase: train/tiny-mock\ngrid: {}\ngrid: {alpha: [0.5]}\n")
    a["sweep_dup"] = str(tmp / "sweep_dup.yaml")
    for name, points in (("report_points_dict", "{}"), ("report_points_garbage", "[{\"name\": ")):
        (tmp / name).mkdir()
        (tmp / name / "points.json").write_text(points)
        a[name] = str(tmp / name)
    bad = tmp / "report_bad_metrics"
    (bad / "runs" / "p").mkdir(parents=True)
    (bad / "points.json").write_text(json.dumps([{"name": "p", "student": "s", "teacher": None}]))
    (bad / "runs" / "p" / "metrics.jsonl").write_text("{oops\n{\"step\": 1}\n")
    a["report_bad_metrics"] = str(bad)
    for name, text in (("hf_bad_json", "{\"architectures\": "), ("hf_list_json", "[]")):
        (tmp / name).mkdir()
        (tmp / name / "config.json").write_text(text)
        a[name] = str(tmp / name)
    a["inputs_digest"] = tree_digest(tmp)
    (tmp / "artifacts.json").write_text(json.dumps(a))
    return a


@pytest.fixture(scope="module")
def outcomes(damaged_inputs):
    """Each case's exit code, output and any escaped exception, from one helper process."""
    tmp = Path(damaged_inputs["tmp"]) / "values_and_files"
    r = subprocess.run([sys.executable, "-m", "tests.workers.bad_values_and_damaged_files", str(tmp / "artifacts.json"),
                        str(tmp / "results.json")], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((tmp / "results.json").read_text())


def test_values_and_files_catalogue_is_complete(outcomes):
    from tests.cli.test_bad_input import EXPECTED as FIRST_CATALOGUE

    assert set(outcomes) == set(EXPECTED)
    assert len(FIRST_CATALOGUE) + len(EXPECTED) >= 100


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_value_or_damaged_file(case, outcomes, damaged_inputs):
    r = outcomes[case]
    code, text = EXPECTED[case]
    assert r["escaped"] is None, (case, r["escaped"])
    assert r["rc"] == code, (case, r)
    assert "Traceback" not in r["stderr"] + r["stdout"], (case, r)
    errors = [line for line in r["stderr"].splitlines() if "error:" in line]
    assert len(errors) == 1 and text in errors[0], (case, r["stderr"][-2000:])
    assert len(errors[0]) <= 1100, (case, len(errors[0]))
    tmp = Path(damaged_inputs["tmp"])
    assert not any((tmp / "runs").glob("*")), (case, list((tmp / "runs").glob("*")))
    assert tree_digest(Path(damaged_inputs["teacher"])) == damaged_inputs["teacher_digest"], case
    assert not (Path(damaged_inputs["locked_dir"]) / "config.yaml").exists(), case


def test_neighbouring_inputs_untouched(outcomes, damaged_inputs):
    tmp = Path(damaged_inputs["tmp"]) / "values_and_files"
    for name in ("results.json", "artifacts.json"):
        (tmp / name).rename(tmp.parent / f"values_and_files-{name}")
    try:
        assert tree_digest(tmp) == damaged_inputs["inputs_digest"]
    finally:
        for name in ("results.json", "artifacts.json"):
            (tmp.parent / f"values_and_files-{name}").rename(tmp / name)
    assert read_state(Path(damaged_inputs["teacher_ckpt"]))["step"] == 3
