"""Datasets through megatron-core's GPTDataset / BlendedMegatronDatasetBuilder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_kd.config.schema import RunConfig
from megatron_kd.errors import ConfigError


@dataclass
class TokenizerInfo:
    """The few tokenizer facts megatron-core's datasets read (vocab size and special ids)."""

    vocab_size: int
    eod: int
    pad: int = -1
    bos: int | None = None

    name: str = "mock"

    @property
    def eos(self) -> int:
        return self.eod

    @property
    def unique_identifiers(self) -> dict:
        """Part of the dataset cache key (megatron-core hashes it into index file names)."""
        return {"class": type(self).__name__, "name": self.name,
                "vocab_size": self.vocab_size, "eod": self.eod}


def build_mock_datasets(cfg: RunConfig, num_train_samples: int, num_valid_samples: int):
    """megatron-core's MockGPTDataset (deterministic synthetic documents ending in EOD)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig, MockGPTDataset

    vocab = cfg.model.vocab_size
    ds_config = GPTDatasetConfig(
        random_seed=cfg.data.seed if cfg.data.seed is not None else cfg.run.seed,
        sequence_length=cfg.train.seq_length,
        split="98,2,0",
        tokenizer=TokenizerInfo(vocab_size=vocab, eod=vocab - 1),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=str(Path(cfg.run.dir) / "data_cache"),
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        MockGPTDataset, [num_train_samples, num_valid_samples, 0], lambda: True, ds_config
    ).build()
    return train, valid


def build_train_valid_datasets(cfg: RunConfig, num_train_samples: int, num_valid_samples: int):
    if cfg.data.mock:
        return build_mock_datasets(cfg, num_train_samples, num_valid_samples)
    raise ConfigError(
        "no training data configured: set data.mock=true for a smoke run with megatron-core's "
        "mock dataset"
    )
