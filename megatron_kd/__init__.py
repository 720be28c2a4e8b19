"""megatron_kd: knowledge distillation for LLM pretraining on megatron-core."""

__version__ = "0.1.0"
