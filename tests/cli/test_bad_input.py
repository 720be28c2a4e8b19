"""The bad-input catalogue: each wrong input gets one clear error line (what, where, how to fix),
a non-zero exit, no traceback, and nothing created or overwritten.

The cases run through `mkd`'s real entry point in one helper process (tests/workers/bad_input.py);
tests/cli/test_cli.py runs a few of them as separate `mkd` processes, exit codes included.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed import REPO
from tests.helpers import ENV, tree_digest

# id -> (exit code, text the one error line must contain)
EXPECTED = {
    "unknown_key": (2, "did you mean 'train.steps'"),
    "wrong_type": (2, "train.steps"),
    "alpha_out_of_range": (2, "kd.alpha must be in [0, 1], got 1.5"),
    "temperature_not_positive": (2, "kd.temperature must be > 0"),
    "top_k_not_positive": (2, "kd.top_k must be >= 1"),
    "top_p_above_one": (2, "kd.top_p must be in (0, 1]"),
    "heads_not_divisible_by_tp": (2, "num_attention_heads=4 is not divisible by parallel.tp=3"),
    "layers_not_divisible_by_pp": (2, "num_layers=2 is not divisible by parallel.pp=3"),
    "world_size_mismatch": (2, "world size 3 is not divisible"),
    "seq_length_above_max": (2, "seq_length=512 is above model.max_position_embeddings=256"),
    "missing_data_prefix": (2, "/nonexistent/corpus/train.idx not found"),
    "empty_dataset": (2, "is empty (0 tokens)"),
    "corrupt_idx": (2, "corrupt or truncated"),
    "truncated_bin": (2, "truncated or mismatched"),
    "data_from_another_tokenizer": (2, "was tokenized with another tokenizer"),
    "missing_teacher": (2, "teacher.checkpoint '/nonexistent/teacher' does not exist"),
    "teacher_of_another_architecture": (2, "is another architecture than teacher.model=models/cpu-small"),
    "teacher_student_tokenizer_mismatch": (2, "tokenizer"),
    "truncated_checkpoint_load": (2, "is incomplete"),
    "truncated_teacher_checkpoint": (2, "is incomplete"),
    "run_dir_holds_another_run": (2, "holds a different run"),
    "fp8_without_transformer_engine": (3, "needs Transformer Engine"),
    "unsupported_hf_architecture": (2, "unsupported Hugging Face architecture GPT2LMHeadModel"),
    "empty_sweep_grid": (2, "expands to no runs"),
    "slurm_missing": (3, "Slurm's sbatch is not on PATH"),
    "unwritable_run_dir": (2, "is not writable"),
    "yaml_syntax_error": (2, "bad.yaml:5:1"),
    "unknown_sweep_key": (2, "unknown sweep key(s) ['gird']"),
    "sweep_only_matches_nothing": (2, "no sweep point matches --only nothing*"),
    "fused_with_magnitude_matched": (2, "kd.fused_output_layer"),
    "eval_missing_checkpoint": (2, "/nonexistent/ckpt"),
    "report_without_runs": (2, "not a sweep directory"),
    "unknown_command_option": (2, "unrecognized arguments: --nrpoc"),
}


@pytest.fixture(scope="module")
def results(catalogue_inputs):
    tmp = Path(catalogue_inputs["tmp"])
    r = subprocess.run([sys.executable, "-m", "tests.workers.bad_input", str(tmp / "artifacts.json"),
                        str(tmp / "results.json")], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((tmp / "results.json").read_text())


def test_catalogue_has_every_case(results):
    assert set(results) == set(EXPECTED) and len(EXPECTED) >= 25


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_input(case, results, catalogue_inputs):
    r = results[case]
    code, text = EXPECTED[case]
    assert r["escaped"] is None, (case, r["escaped"])
    err = [line for line in r["stderr"].splitlines() if line.strip()]
    assert r["rc"] == code, (case, r)
    assert "Traceback" not in r["stderr"] + r["stdout"], (case, r)
    # One line: what is wrong and how to fix it (argparse adds its usage line before it).
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and text in errors[0], (case, err)
    # Nothing created: the case's fresh run dir / outputs do not exist; the teacher run is intact.
    assert not any((Path(catalogue_inputs["tmp"]) / "runs").glob("*")), case
    assert tree_digest(Path(catalogue_inputs["teacher"])) == catalogue_inputs["teacher_digest"], case
