"""The bad-input catalogue of values and damaged files (tests/cli/test_bad_values_and_damaged_files.py): the
cases, run like the first catalogue's (tests/workers/bad_input.py) through `mkd`'s real entry point.

    python -m tests.workers.bad_values_and_damaged_files ARTIFACTS.json RESULTS.json
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path

from tests.workers.bad_input import case_makers, run_case

REPO = Path(__file__).resolve().parents[2]


def _bomb(levels: int = 6) -> str:
    """A flow-style YAML value whose aliases expand to 10**levels values."""
    parts = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        parts.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "[" + ", ".join(parts) + "]"


def cases(a: dict) -> dict[str, dict]:
    run, data, t, td = case_makers(a)
    as_teacher = lambda name, *o: {"argv": ["train", "train/tiny-mock", *data, "train.steps=3", *o]}  # noqa: E731
    c = {
        # numbers: finite, in range
        "lr_inf": t("d1", "train.lr=inf"),
        "lr_nan": t("d2", "train.lr=.nan"),
        "temperature_inf": t("d3", "kd.temperature=inf"),
        "alpha_nan": t("d4", "kd.alpha=.nan"),
        "min_lr_ratio_nan": t("d5", "train.min_lr_ratio=.nan"),
        "clip_grad_inf": t("d6", "train.clip_grad=inf"),
        "alpha_schedule_final_nan": t("d7", "kd.alpha_schedule.final=.nan"),
        "global_batch_zero": t("d8", "train.global_batch_size=0"),
        "global_batch_negative": t("d9", "train.global_batch_size=-4"),
        "adam_beta1_one": t("d10", "train.adam_beta1=1.0"),
        "adam_beta2_negative": t("d11", "train.adam_beta2=-0.1"),
        "adam_eps_zero": t("d12", "train.adam_eps=0"),
        "weight_decay_negative": t("d13", "train.weight_decay=-1"),
        "hidden_dropout_above_one": t("d14", "model.hidden_dropout=1.5"),
        "attention_dropout_negative": t("d15", "model.attention_dropout=-0.1"),
        "seed_negative": t("d16", "run.seed=-1"),
        "seed_too_big": t("d17", "run.seed=4294967296"),
        "data_seed_negative": t("d18", "data.seed=-5"),
        "steps_beyond_dataset_index": t("d19", "train.steps=10000000000000000000000"),
        "steps_zero": t("d20", "train.steps=0"),
        "steps_negative": t("d21", "train.steps=-3"),
        "tokens_zero": t("d22", "train.steps=null", "train.tokens=0"),
        "warmup_negative": t("d23", "train.warmup_steps=-1"),
        "max_skips_negative": t("d24", "train.max_consecutive_skips=-1"),
        "jsd_beta_one": t("d25", "kd.jsd_beta=1.0"),
        "other_bucket_without_truncation": t("d26", "kd.other_bucket=true"),
        "top_k_and_top_p": t("d27", "kd.top_k=5", "kd.top_p=0.9"),
        "temperature_schedule_final_zero": t("d28", "kd.temperature_schedule.final=0"),
        "norm_epsilon_zero": t("d29", "model.norm_epsilon=0"),
        # run directories
        "run_dir_root": t("d30", "run.dir=/"),
        "run_dir_empty": {"argv": ["train", "train/tiny-mock", "run.dir="]},
        "run_dir_home": {"argv": ["train", "train/tiny-mock", f"run.dir={a['home']}"]},
        "run_dir_in_recipes": {"argv": ["train", "train/tiny-mock", f"run.dir={REPO}/recipes/runs/x"]},
        "run_dir_in_package": {"argv": ["train", "train/tiny-mock", f"run.dir={REPO}/megatron_kd/x"]},
        "run_dir_cwd": {"argv": ["train", "train/tiny-mock", "run.dir=."]},
        "run_dir_newline": {"argv": ["train", "train/tiny-mock", f'run.dir="{a["tmp"]}/runs/x\\ntouch y #"']},
        "run_name_tab": t("d37", 'run.name="a\\tb"'),
        "run_dir_locked": {"argv": ["train", "train/tiny-mock", f"run.dir={a['locked_dir']}"],
                           "lock": a["locked_dir"]},
        "overwrite_would_delete_teacher": {"argv": ["train", "train/tiny-mock", *data,
                                                    f"run.dir={a['teacher']}", "kd.alpha=0.5",
                                                    f"teacher.checkpoint={a['teacher']}", "--overwrite"]},
        "overwrite_would_delete_checkpoint_load": {"argv": ["train", "train/tiny-mock", *data,
                                                            f"run.dir={a['teacher']}", "train.lr=0.1",
                                                            f"checkpoint.load={a['teacher_ckpt']}",
                                                            "--overwrite"]},
        # YAML
        "yaml_duplicate_key": {"argv": ["train", a["dup_key_yaml"], run("d41")]},
        "yaml_duplicate_section": {"argv": ["train", a["dup_section_yaml"], run("d42")]},
        "yaml_alias_bomb": {"argv": ["train", a["bomb_yaml"], run("d43")]},
        "yaml_alias_bomb_in_override": t("d44", f"data.valid={_bomb()}"),
        "yaml_recursive_alias": {"argv": ["train", a["recursive_yaml"], run("d45")]},
        "huge_value_in_error": t("d46", "train.steps=" + "x" * 50000),
        # checkpoints
        "state_file_empty_object": td("d47", f"checkpoint.load={a['state_empty']}"),
        "state_file_wrong_type": td("d48", f"checkpoint.load={a['state_wrong_type']}"),
        "state_file_edited": td("d49", f"checkpoint.load={a['state_edited']}"),
        "checkpoint_bytes_flipped": td("d50", f"checkpoint.load={a['bitflip']}"),
        "teacher_bytes_flipped": td("d51", f"teacher.checkpoint={a['bitflip']}"),
        "latest_names_another_run": as_teacher("d52", f"run.dir={a['latest_other']}"),
        "eval_state_empty": {"argv": ["eval", a["state_empty"]]},
        "eval_latest_names_another_run": {"argv": ["eval", a["latest_other"]]},
        "eval_checkpoint_bytes_flipped": {"argv": ["eval", a["bitflip"]]},
        "analyze_teacher_bytes_flipped": {"argv": ["analyze", a["bitflip"], a["teacher"]]},
        # data
        "token_ids_beyond_vocabulary": t("d57", *data[:2], f"data.train=[{a['big_ids']}]", "model.vocab_size=512"),
        "valid_token_ids_beyond_vocabulary": td("d58", f"data.valid={{bad: {a['big_ids']}}}"),
        # launcher environment
        "rank_not_an_integer": {"argv": ["train", "train/tiny-mock", run("d59")],
                                "env": {"RANK": "abc", "WORLD_SIZE": "2"}},
        "world_size_zero": {"argv": ["train", "train/tiny-mock", run("d60")], "env": {"RANK": "0", "WORLD_SIZE": "0"}},
        "rank_not_below_world_size": {"argv": ["train", "train/tiny-mock", run("d61")],
                                      "env": {"RANK": "3", "WORLD_SIZE": "2"}},
        "slurm_procid_garbage": {"argv": ["train", "train/tiny-mock", run("d62")],
                                 "env": {"SLURM_PROCID": "x", "SLURM_NTASKS": "1"}},
        "nproc_zero": {"argv": ["train", "train/tiny-mock", run("d63"), "--nproc", "0"]},
        # sweeps
        "sweep_grid_axis_not_a_list": {"argv": ["sweep", a["sweep_axis_scalar"]]},
        "sweep_teacher_not_a_mapping": {"argv": ["sweep", a["sweep_teacher_str"]]},
        "sweep_seeds_not_integers": {"argv": ["sweep", a["sweep_seed_str"]]},
        "sweep_teacher_grid_bad_pattern": {"argv": ["sweep", a["sweep_bad_pattern"]]},
        "sweep_duplicate_key": {"argv": ["sweep", a["sweep_dup"]]},
        "sweep_bad_point_writes_nothing": {"argv": ["sweep", a["sweep_bad_point"]]},
        "sweep_grid_not_a_mapping": {"argv": ["sweep", a["sweep_grid_list"]]},
        # report
        "report_points_not_a_list": {"argv": ["report", a["report_points_dict"]]},
        "report_points_not_json": {"argv": ["report", a["report_points_garbage"]]},
        "report_metrics_line_corrupt": {"argv": ["report", a["report_bad_metrics"]]},
        # convert / check-pair
        "convert_config_json_malformed": {"argv": ["convert", "hf-to-mcore", a["hf_bad_json"], f"{a['tmp']}/runs/d74"]},
        "convert_config_json_a_list": {"argv": ["convert", "hf-to-mcore", a["hf_list_json"], f"{a['tmp']}/runs/d75"]},
        "check_pair_config_json_malformed": {"argv": ["check-pair", a["hf_bad_json"], a["teacher"]]},
        # plan
        "plan_gpus_zero": {"argv": ["plan", "train/tiny-mock", "--gpus", "0"]},
        "plan_memory_nan": {"argv": ["plan", "train/tiny-mock", "--gpus", "1", "--gpu-memory-gb", "nan"]},
        "plan_memory_negative": {"argv": ["plan", "train/tiny-mock", "--gpus", "1", "--gpu-memory-gb", "-80"]},
        "plan_lr_inf": {"argv": ["plan", "train/tiny-mock", "train.lr=inf", "--gpus", "1"]},
        # slurm submit (rendering refuses before anything is written)
        "submit_job_name_newline": {"argv": ["slurm", "submit", "train/tiny-mock", run("d81"), "--gpus-per-node", "0",
                                             "--ntasks-per-node", "1", "--job-name", "a\ntouch x", "--dry-run"]},
        "submit_run_dir_newline": {"argv": ["slurm", "submit", "train/tiny-mock", f'run.dir="{a["tmp"]}/runs/x\\nid"',
                                            "--gpus-per-node", "0", "--ntasks-per-node", "1", "--dry-run"]},
        "submit_partition_escape": {"argv": ["slurm", "submit", "train/tiny-mock", run("d83"), "--gpus-per-node", "0",
                                             "--ntasks-per-node", "1", "--partition", "a\x1b[2Jb", "--dry-run"]},
        "submit_nodes_zero": {"argv": ["slurm", "submit", "train/tiny-mock", run("d84"), "--nodes", "0", "--dry-run"]},
        # mkd config and mkd info reject what train would
        "config_lr_inf": {"argv": ["config", "train/tiny-mock", "train.lr=inf"]},
        "config_run_dir_root": {"argv": ["config", "train/tiny-mock", "run.dir=/"]},
        "config_yaml_duplicate_key": {"argv": ["config", a["dup_key_yaml"]]},
        "info_dropout_above_one": {"argv": ["info", "models/tiny", "model.hidden_dropout=2"]},
        # production-path keys: what needs CUDA, and combinations megatron-core cannot run
        "overlap_param_gather_on_cpu": t("d89", "parallel.overlap_param_gather=true",
                                         "parallel.distributed_optimizer=true"),
        "overlap_param_gather_without_dist_opt": t("d90", "parallel.overlap_param_gather=true"),
        "teacher_fp8_on_cpu": td("d91", f"teacher.checkpoint={a['teacher']}", "precision.dtype=bf16",
                                 "teacher.fp8=hybrid"),
        "recompute_layers_not_dividing": t("d92", "train.recompute=full", "train.recompute_layers=3"),
        "recompute_unknown": t("d93", "train.recompute=some"),
        "teacher_dtype_with_pp": t("d94", "teacher.dtype=bf16", "parallel.pp=2", "--nproc", "2"),
        "profile_steps_negative": t("d95", "--profile-steps", "-1"),
        "bucket_size_zero": t("d96", "parallel.ddp_bucket_size=0"),
    }
    return c


def _main() -> None:
    artifacts = json.loads(Path(sys.argv[1]).read_text())
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        os.environ.pop(k, None)
    results = {}
    for name, case in cases(artifacts).items():
        held = None
        if case.get("lock"):  # another `mkd train` holds this run dir (its lock, as it takes it)
            held = os.open(Path(case["lock"]) / ".mkd.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(held, b"4242\n")
        try:
            results[name] = run_case(case)
        finally:
            if held is not None:
                os.close(held)
        results[name]["argv"] = [x[:200] for x in case["argv"]]
    Path(sys.argv[2]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    _main()
