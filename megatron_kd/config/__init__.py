"""Recipe loading and typed configuration."""

from megatron_kd.config.loader import dump_config, load_config, resolve_recipe_path
from megatron_kd.config.schema import RunConfig
from megatron_kd.config.validate import padded_vocab, padded_vocab_size, validate

__all__ = ["RunConfig", "dump_config", "load_config", "padded_vocab", "padded_vocab_size", "resolve_recipe_path",
           "validate"]
