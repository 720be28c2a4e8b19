"""Cross-field rules: each impossible combination fails before any process group starts."""

import pytest

from megatron_kd.config import load_config, padded_vocab_size, validate
from megatron_kd.errors import ConfigError

CASES = [
    (["parallel.tp=3"], r"num_attention_heads=4 is not divisible by parallel.tp=3"),
    (["model.num_attention_heads=4", "model.num_query_groups=1", "parallel.tp=2"],
     r"num_query_groups=1 \(GQA kv heads\) is not divisible by parallel.tp=2"),
    (["model.num_query_groups=3"], r"num_attention_heads=4 is not a multiple of model.num_query_groups=3"),
    (["parallel.pp=3"], r"num_layers=2 is not divisible by parallel.pp=3"),
    (["model.hidden_size=66"], r"hidden_size=66 is not divisible by model.num_attention_heads=4"),
    (["train.seq_length=512"], r"seq_length=512 is above model.max_position_embeddings=256"),
    (["train.global_batch_size=5"], r"global_batch_size=5 is not a multiple of train.micro_batch_size=2"),
    (["parallel.sequence_parallel=true"], r"sequence_parallel=true needs parallel.tp > 1"),
    (["train.warmup_steps=50"], r"warmup_steps=50 must be >= 0 and below the run's 10 steps"),
    (["train.min_lr_ratio=1.5"], r"min_lr_ratio must be in \[0, 1\]"),
    (["precision.fp8=hybrid"], r"precision.fp8 needs precision.dtype=bf16"),
    (["train.lr=0"], r"train.lr must be > 0"),
    (["train.tokens=1000"], r"give exactly one of train.steps and train.tokens"),
    (["data.mock=false"], r"no training data configured"),
    (["data.mock=false", "data.train=[a]"], r"data.tokenizer is not set"),
    (["data.mock=false", "data.train=[a,b]", "data.tokenizer=t", "data.train_weights=[1.0]"],
     r"data.train_weights has 1 entries for 2 data.train prefixes"),
    (["data.mock=false", "data.train=[a]", "data.tokenizer=t", "data.split=90,10"],
     r"data.split='90,10' must be three non-negative weights"),
    (["checkpoint.save_at_tokens=[0]"], r"save_at_tokens must be positive"),
    (["run.dir=~/runs/x"], r"run.dir=~/runs/x starts with '~', which is not expanded here"),
    (["parallel.vpp=2"], r"parallel.vpp=2 splits each pipeline rank's layers .* needs parallel.pp >= 2, got pp=1"),
    (["parallel.pp=2", "parallel.vpp=0"], r"parallel.vpp must be >= 1"),
    (["parallel.pp=2", "parallel.vpp=2"],
     r"model.num_layers=2 is not divisible by parallel.pp x parallel.vpp = 2 x 2"),
    (["model.num_layers=8", "parallel.pp=2", "parallel.vpp=2", "train.recompute=full", "train.recompute_layers=4"],
     r"recompute_layers=4 must divide the 2 layers of a pipeline stage"),
]


@pytest.mark.parametrize("overrides, message", CASES)
def test_invalid_combinations(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("train/tiny-mock", overrides)


def test_world_size_rules():
    cfg = load_config("train/tiny-mock", ["parallel.tp=2"])
    validate(cfg, 2)
    validate(cfg, 4)
    with pytest.raises(ConfigError, match=r"world size 3 is not divisible by parallel.tp x parallel.pp = 2"):
        validate(cfg, 3)
    # dp = 4 / 2 = 2 ranks x micro 2 = 4 sequences: global 6 does not split.
    cfg = load_config("train/tiny-mock", ["parallel.tp=2", "train.global_batch_size=6"])
    with pytest.raises(ConfigError, match=r"global_batch_size=6 is not divisible by "
                                          r"micro_batch_size x data-parallel size = 2 x 2"):
        validate(cfg, 4)
    cfg = load_config("train/tiny-mock", ["parallel.world_size=2"])
    validate(cfg, 2)
    # interleaved 1F1B runs groups of PP micro-batches: 8 / (2 x 1) = 4 at PP=2, not 3
    cfg = load_config("train/tiny-mock", ["model.num_layers=4", "parallel.pp=2", "parallel.vpp=2",
                                          "train.global_batch_size=8"])
    validate(cfg, 2)
    cfg.train.global_batch_size = 6
    with pytest.raises(ConfigError, match=r"parallel.vpp=2 needs the micro-batches per step \(3 = .*\) to be a "
                                          r"multiple of parallel.pp=2; set train.global_batch_size to a multiple of 4"):
        validate(cfg, 2)
    cfg = load_config("train/tiny-mock", ["parallel.world_size=8", "train.global_batch_size=16"])
    with pytest.raises(ConfigError, match=r"parallel.world_size=8 but the launcher started 2"):
        validate(cfg, 2)


def test_padded_vocab():
    assert padded_vocab_size(128256, 128, 1) == 128256
    assert padded_vocab_size(128256, 128, 8) == 129024
    assert padded_vocab_size(151936, 128, 4) == 152064  # the Qwen padding users trip over
    assert padded_vocab_size(250, 64, 2) == 256


def test_an_moe_student_split_over_tensor_parallel_ranks_needs_sequence_parallel():
    with pytest.raises(ConfigError, match=r"model.moe at parallel.tp=2 needs parallel.sequence_parallel=true"):
        load_config("train/teacher-cpu-moe", ["parallel.tp=2"])
    load_config("train/teacher-cpu-moe", ["parallel.tp=2", "parallel.sequence_parallel=true"])
