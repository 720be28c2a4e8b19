"""Analytic parameter counts for a llama-style ModelConfig (no megatron import); FLOPs: models/flops.py."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_kd.config.schema import ModelConfig


@dataclass(frozen=True)
class ParamCount:
    embedding: int  # input embedding (true vocabulary)
    output: int  # output layer; 0 when tied to the embedding
    per_layer: int
    final_norm: int
    num_layers: int

    @property
    def non_embedding(self) -> int:
        return self.per_layer * self.num_layers + self.final_norm

    @property
    def total(self) -> int:
        return self.embedding + self.output + self.non_embedding


def count_parameters(m: ModelConfig, vocab_size: int | None = None) -> ParamCount:
    """Parameter count; `vocab_size` defaults to the true vocabulary (pass the padded one to
    match a built model's tensors)."""
    vocab = m.vocab_size if vocab_size is None else vocab_size
    head_dim = m.kv_channels or m.hidden_size // m.num_attention_heads
    groups = m.num_query_groups or m.num_attention_heads
    q = m.hidden_size * m.num_attention_heads * head_dim
    kv = 2 * m.hidden_size * groups * head_dim
    attn_out = m.num_attention_heads * head_dim * m.hidden_size
    mlp = 3 * m.hidden_size * m.ffn_hidden_size  # SwiGLU: gate, up, down
    norms = 2 * m.hidden_size + (2 * head_dim if m.qk_layernorm else 0)
    per_layer = q + kv + attn_out + mlp + norms
    embedding = vocab * m.hidden_size
    output = embedding if m.untie_embeddings_and_output_weights else 0
    return ParamCount(embedding, output, per_layer, m.hidden_size, m.num_layers)


def human(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))
