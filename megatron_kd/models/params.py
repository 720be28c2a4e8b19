"""Analytic parameter counts for a llama-style ModelConfig (no megatron import); FLOPs: models/flops.py."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_kd.config.schema import ModelConfig
from megatron_kd.config.validate import moe_layers


@dataclass(frozen=True)
class ParamCount:
    embedding: int  # input embedding (true vocabulary)
    output: int  # output layer; 0 when tied to the embedding
    per_layer: int  # a dense layer's (an MoE model's MoE layers differ: layers_total, layers_active)
    final_norm: int
    num_layers: int
    layers_total: int  # every decoder layer's parameters, all experts counted
    layers_active: int  # what one token passes through: the router, its top-k experts, a shared one
    experts: int = 0  # the routed experts' parameters (in layers_total): what expert parallelism splits

    @property
    def non_embedding(self) -> int:
        return self.layers_total + self.final_norm

    @property
    def total(self) -> int:
        return self.embedding + self.output + self.non_embedding

    @property
    def active(self) -> int:
        """Parameters one token uses (the total for a dense model)."""
        return self.embedding + self.output + self.layers_active + self.final_norm


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
    total = active = experts = 0
    for is_moe in moe_layers(m):
        if not is_moe:
            total, active = total + per_layer, active + per_layer
            continue
        moe = m.moe
        expert = 3 * m.hidden_size * (moe.ffn_hidden_size or m.ffn_hidden_size)
        shared = 3 * m.hidden_size * (moe.shared_expert_ffn_hidden_size or 0)
        common = per_layer - mlp + moe.num_experts * m.hidden_size + shared  # attention, norms, router
        total += common + moe.num_experts * expert
        active += common + moe.router_topk * expert
        experts += moe.num_experts * expert
    return ParamCount(embedding, output, per_layer, m.hidden_size, m.num_layers, total, active, experts)


def human(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))
