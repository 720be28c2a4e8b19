"""The bad-input catalogue: each wrong input gets one clear error line (what, where, how to fix),
a non-zero exit, no traceback, and nothing created or overwritten.

The cases run through `mkd`'s real entry point in one helper process (tests/workers/bad_input.py);
tests/cli/test_cli.py runs a few of them as separate `mkd` processes, exit codes included.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed import REPO
from tests.helpers import ENV, mkd

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


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _copy_prefix(src: str, dst: Path) -> str:
    for ext in (".idx", ".bin", ".meta.json"):
        if Path(src + ext).exists():
            shutil.copy(src + ext, str(dst) + ext)
    return str(dst)


@pytest.fixture(scope="module")
def artifacts(text_corpus, tmp_path_factory):
    """Good inputs (a corpus, a trained teacher) and the broken ones the catalogue feeds mkd."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_kd.data.preprocess import preprocess
    from megatron_kd.data.tokenizer import train_sentencepiece
    from tests.conftest import corpus_overrides, pydoc_documents

    tmp = tmp_path_factory.mktemp("bad_input")
    a = {"tmp": str(tmp), "tokenizer": text_corpus["tokenizer"], "train": text_corpus["train"],
         "valid": text_corpus["valid"]}
    # Another tokenizer with the same vocabulary size (different pieces), and data made with it.
    other = tmp / "other"
    other.mkdir()
    (other / "text.txt").write_text("\n".join(" ".join(w[::-1] for w in d.split()) for d in pydoc_documents()))
    a["other_tokenizer"] = str(train_sentencepiece([other / "text.txt"], other, 512))
    preprocess([Path(text_corpus["dir"]) / "valid.jsonl"], a["other_tokenizer"], other / "valid",
               workers=1, progress=False)
    a["other_train"] = str(other / "valid")
    # Broken data: an empty dataset, a corrupt index, a truncated .bin.
    builder = IndexedDatasetBuilder(str(tmp / "empty.bin"))
    builder.finalize(str(tmp / "empty.idx"))
    a["empty"] = str(tmp / "empty")
    a["corrupt_idx"] = _copy_prefix(text_corpus["train"], tmp / "corrupt")
    with open(a["corrupt_idx"] + ".idx", "r+b") as f:
        f.write(b"\0" * 16)
    a["truncated_bin"] = _copy_prefix(text_corpus["train"], tmp / "truncated")
    size = os.path.getsize(a["truncated_bin"] + ".bin")
    os.truncate(a["truncated_bin"] + ".bin", size // 2)
    # A trained teacher (2 steps) and a truncated copy of its checkpoint.
    teacher = tmp / "teacher"
    r = mkd("train", "train/tiny-mock", *corpus_overrides(text_corpus), f"run.dir={teacher}", "train.steps=3")
    assert r.returncode == 0, r.stderr[-3000:]
    a["teacher"] = str(teacher)
    ckpt = next(p for p in (teacher / "checkpoints").iterdir() if p.is_dir())
    shutil.copytree(ckpt, tmp / "truncated_ckpt")
    biggest = max((p for p in (tmp / "truncated_ckpt").rglob("*.distcp")), key=lambda p: p.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 3)
    a["truncated_ckpt"] = str(tmp / "truncated_ckpt")
    # Files for the other commands.
    (tmp / "gpt2").mkdir()
    (tmp / "gpt2" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"],
                                                          "model_type": "gpt2"}))
    a["gpt2_dir"] = str(tmp / "gpt2")
    sweep = {"name": "s", "base": "train/tiny-mock", "out": str(tmp / "sweep-out")}
    for name, extra in (("empty_sweep", {"baseline": False, "grid": {"alpha": [0.5]}}),
                        ("one_point_sweep", {"baseline": True}),
                        ("bad_sweep_key", {"baseline": True, "gird": {}})):
        (tmp / f"{name}.yaml").write_text(json.dumps({**sweep, **extra}))
        a[name] = str(tmp / f"{name}.yaml")
    (tmp / "bad.yaml").write_text("base: train/tiny-mock\ntrain:\n  steps: 3\n  lr: [1e-3,\n")
    a["bad_yaml"] = str(tmp / "bad.yaml")
    (tmp / "empty-sweep-dir").mkdir()
    a["teacher_digest"] = _digest(teacher)
    (tmp / "artifacts.json").write_text(json.dumps(a))
    return a


@pytest.fixture(scope="module")
def results(artifacts):
    tmp = Path(artifacts["tmp"])
    r = subprocess.run([sys.executable, "-m", "tests.workers.bad_input", str(tmp / "artifacts.json"),
                        str(tmp / "results.json")], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((tmp / "results.json").read_text())


def test_catalogue_has_every_case(results):
    assert set(results) == set(EXPECTED) and len(EXPECTED) >= 25


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_input(case, results, artifacts):
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
    assert not any((Path(artifacts["tmp"]) / "runs").glob("*")), case
    assert _digest(Path(artifacts["teacher"])) == artifacts["teacher_digest"], case
