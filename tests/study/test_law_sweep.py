"""The distillation law on real runs, end to end in minutes: a sweep of two student sizes at
four lengths (grid.steps) is the supervised law's data and the teacher zoo; a second sweep
distils both sizes from three of its runs; `mkd fit` fits both laws on the two sweeps and
`mkd advise` answers at a budget inside them and refuses one outside."""

import csv
import json

import pytest
import yaml

from tests.conftest import corpus_overrides
from tests.helpers import mkd, mkd_in_process

MODELS = {"m1": {"num_layers": 1, "hidden_size": 32, "ffn_hidden_size": 64, "num_attention_heads": 2,
                 "num_query_groups": 1},
          "m2": {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 4,
                 "num_query_groups": 2}}


@pytest.mark.slow
def test_fit_and_advise_on_a_tiny_real_sweep(text_corpus, tmp_path, capsys):
    students = []
    for name, m in MODELS.items():
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump({"model": {"name": name, **m, "vocab_size": 512,
                                                    "make_vocab_size_divisible_by": 64,
                                                    "max_position_embeddings": 64,
                                                    "untie_embeddings_and_output_weights": True}}))
        students.append(str(recipe))
    common = corpus_overrides(text_corpus)[:-1] + [
        "train.global_batch_size=8", "train.micro_batch_size=8", "train.seq_length=32", "logging.eval_samples=32",
        "train.lr=3e-3", "train.warmup_steps=1", "checkpoint.save_interval=0", "data.seed=7"]
    zoo = tmp_path / "zoo"
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(
        {"name": "zoo", "base": "train/tiny-mock", "out": str(zoo), "overrides": common, "baseline": True,
         "grid": {"student": students, "steps": [4, 8, 16, 32]}}))
    r = mkd("sweep", str(tmp_path / "zoo.yaml"), "--local", timeout=900)
    assert r.stdout.count(": training") == 8
    teachers = [{"name": n, "checkpoint": str(zoo / "runs" / f"{n}__baseline")}
                for n in ("m1-32steps", "m2-8steps", "m2-32steps")]
    kd = tmp_path / "kd"
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(
        {"name": "kd", "base": "kd/_cpu_base", "out": str(kd), "overrides": common, "baseline": False,
         "grid": {"student": students, "steps": [16], "teacher": teachers, "alpha": [0.5]}}))
    mkd("sweep", str(tmp_path / "kd.yaml"), "--local", timeout=900)

    law_file = tmp_path / "law.json"
    # fit and advise start no process group: they run in this process (no interpreter start each)
    rc, out, err = mkd_in_process(capsys, "fit", zoo, kd, "--out", law_file, "--bootstrap", 40)
    assert rc == 0 and "supervised law (8 runs" in out and "distillation law at α=0.5 (6 runs)" in out, out + err
    assert "held-out check: fitted without the largest cell" in out
    law = json.loads(law_file.read_text())
    assert law["parameters"] == "flop" and law["seq_length"] == 32  # from the sweeps' recipes
    assert not law["supervised"]["fixed"] and isinstance(law["distillation"]["0.5"], dict)
    assert law["supervised"]["rmse_log"] < 0.05  # the law describes the runs it was fitted on
    rows = list(csv.DictReader(open(kd / "report.csv")))
    m2 = next(r for r in rows if r["run"].startswith("m2-"))
    budget = float(m2["flops"])  # the report's student_flops: the law's and advise's currency too
    rc, out, err = mkd_in_process(capsys, "advise", law_file, "--flops", f"{budget:g}")
    assert rc == 0 and out.splitlines()[-1].startswith("recommendation ("), out + err
    assert "supervised" in out
    t = next(r for r in rows if r["teacher"] == "m2-32steps")
    rc, out, err = mkd_in_process(capsys, "advise", law_file, "--flops", f"{budget:g}", "--teacher",
                                  float(t["teacher_pass_flops"]) / (2 * int(t["student_tokens"])),  # its N
                                  t["teacher_val/indomain"])
    assert rc == 0 and out.splitlines()[-1].startswith("recommendation ("), out
    # priced from a law that beats ignoring the teacher, or said in one line not to be, with the gains
    cv = law["distillation"]["0.5"]["cv"]
    priced = cv["law_rmse_log"] < cv["no_effect_rmse_log"]
    assert ("existing teacher" in out) == priced and ("is not priced" in out) != priced, out
    assert priced or "measured at N=" in out, out
    rc, out, err = mkd_in_process(capsys, "advise", law_file, "--flops", "1e30")
    assert rc == 2 and "--extrapolate" in err and "Traceback" not in err, err
