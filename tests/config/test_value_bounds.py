"""Numbers of a recipe are bounded where they are validated, one line each, before any command
builds anything: every integer fits 64 bits, model sizes are below 2**31, RoPE's base and the
float model settings lie in sane ranges, and a streamed cache's wait is a timer the platform has
(a 201-digit model.hidden_size tracebacked in `mkd info`, rotary_base = 1e30 crashed in the rank)."""

import pytest

from megatron_kd.cli.main import main

HUGE = str(10**200)
CASES = {
    "hidden_size_201_digits": (f"model.hidden_size={HUGE}", "model.hidden_size is a 201-digit number, beyond a 64-bit"),
    "vocab_above_2_31": ("model.vocab_size=3000000000", "model.vocab_size must be below 2**31"),
    "kv_channels_above_2_31": ("model.kv_channels=4294967296", "model.kv_channels must be below 2**31"),
    "rotary_base_1e30": ("model.rotary_base=1e30", "model.rotary_base is a 31-digit number, beyond a 64-bit"),
    "rotary_base_2e12": ("model.rotary_base=2e12", "model.rotary_base must be in [1, 1e12]"),
    "rotary_base_zero": ("model.rotary_base=0", "model.rotary_base must be in [1, 1e12]"),
    "norm_epsilon_above_one": ("model.norm_epsilon=5.0", "model.norm_epsilon must be at most 1, got 5.0"),
    "init_std_huge": ("model.init_method_std=1e300", "model.init_method_std must be at most 1, got 1e+300"),
    "rope_scaling_huge": ("model.rope_scaling_factor=1e200", "model.rope_scaling_factor must be at most 10000"),
    "steps_30_digits": (f"train.steps={10**30}", "training length of 4e+30 sequences is above"),
    "tokens_400_digits": (["train.steps=null", f"train.tokens={10**400}"],
                          "training length of a 399-digit number sequences is above"),
    "steps_and_tokens": ([f"train.tokens={10**400}"], "(got steps=10, tokens=a 401-digit number)"),
    "seed_negative_huge": (f"run.seed=-{HUGE}", "run.seed is a 201-digit number"),
    "top_k_huge": (f"kd.top_k={HUGE}", "kd.top_k is a 201-digit number"),
    "save_at_tokens_huge": (f"checkpoint.save_at_tokens=[{HUGE}]", "checkpoint.save_at_tokens[0] is a 201-digit"),
    "cache_wait_1e300": ("teacher.cache_wait_s=1e300", "teacher.cache_wait_s must be a number of seconds in [0, "),
}


def _one_error(capsys, argv, text):
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and text in lines[0] and len(lines[0]) < 400, out + err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_out_of_range_number_is_one_line(capsys, case):
    override, text = CASES[case]
    _one_error(capsys, ["config", "train/tiny-mock", *([override] if isinstance(override, str) else override)], text)


@pytest.mark.parametrize("command", [["info"], ["plan", "--gpus", "8"], ["train"]])
def test_every_command_refuses_it_before_building(capsys, tmp_path, command):
    for case in ("hidden_size_201_digits", "rotary_base_1e30"):
        override, text = CASES[case]
        argv = [command[0], "train/tiny-mock", override, f"run.dir={tmp_path / 'r'}", *command[1:]]
        _one_error(capsys, argv, text)
    assert not (tmp_path / "r").exists()


def test_sane_values_pass(capsys):
    assert main(["config", "train/tiny-mock", "model.rotary_base=500000", "model.norm_epsilon=1e-6",
                 "teacher.cache_wait_s=86400", "model.rope_scaling_factor=32.0"]) == 0
