"""The preflight memory floor: a model whose weights, gradients, optimizer state, activations or
logits (the arithmetic of `mkd plan`) cannot fit this machine is one line before any allocation,
and nothing is created."""

from __future__ import annotations

import pytest

from megatron_kd.cli.main import main
from megatron_kd.config import load_config
from megatron_kd.errors import ConfigError
from megatron_kd.training import preflight

HUGE = {
    "vocab_2e9": ["model.vocab_size=2000000000"],
    "seq_1e9": ["model.max_position_embeddings=1000000000", "train.seq_length=1000000000"],
    "hidden_1e6": ["model.hidden_size=1000000", "model.num_attention_heads=1000"],
}


@pytest.mark.parametrize("case", sorted(HUGE))
def test_huge_model_is_refused_before_allocation(case, tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(["train", "train/tiny-mock", "train.steps=3", f"run.dir={run_dir}", *HUGE[case]])
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if "error:" in line]
    assert rc == 2 and len(lines) == 1, out + err
    assert "GiB per process" in lines[0] and "use a smaller model" in lines[0]
    assert "Traceback" not in out + err
    assert list(tmp_path.iterdir()) == []


def test_floor_uses_machine_memory(monkeypatch):
    cfg = load_config("train/tiny-mock")
    preflight.check_memory(cfg)  # the tiny model fits anywhere
    monkeypatch.setattr(preflight, "machine_memory", lambda: (1024.0, "a 1 KiB test machine"))
    with pytest.raises(ConfigError, match="more than a 1 KiB test machine"):
        preflight.check_memory(cfg)


def test_forward_only_leaves_out_training_state(monkeypatch):
    cfg = load_config("train/tiny-mock", ["model.hidden_size=4096", "model.num_attention_heads=32",
                                          "model.num_layers=16", "model.ffn_hidden_size=16384"])
    monkeypatch.setattr(preflight, "machine_memory", lambda: (1.0, "a 1-byte test machine"))
    need = {}
    for training in (True, False):
        with pytest.raises(ConfigError) as e:
            preflight.check_memory(cfg, training=training)
        need[training] = float(str(e.value).split("at least ")[1].split(" GiB")[0].replace(",", ""))
    assert 0 < need[False] < need[True]  # no gradients or optimizer state in a forward pass


def test_teacher_cache_job_is_refused_before_the_teacher_runs(tmp_path, capsys, monkeypatch):
    from tests.helpers import mkd

    teacher = tmp_path / "teacher"
    mkd("init", "train/tiny-mock", "model.vocab_size=2048", f"run.dir={tmp_path / 'unused'}", "--out", teacher)
    monkeypatch.setattr(preflight, "machine_memory", lambda: (1024.0, "a 1 KiB test machine"))
    out = tmp_path / "cache"
    rc = main(["teacher-cache", "kd/cpu-tiny-to-small", f"teacher.checkpoint={teacher}", "teacher.model=null",
               "data.mock=true", "--out", str(out)])
    text = "".join(capsys.readouterr())
    lines = [line for line in text.splitlines() if "error:" in line]
    assert rc == 2 and len(lines) == 1 and "more than a 1 KiB test machine" in lines[0], text
    assert not out.exists()
