"""Initial weights that depend on the model recipe and the seed only, not on the layout.

Every parameter is drawn from its own generator, seeded by (run seed, the parameter's
layout-free name): decoder layers by their global index, the last stage's copy of tied
embeddings under the embedding's name. Each rank draws the full logical tensor on the CPU and
keeps its tensor-parallel shard, so a model built at TP=1, PP=2, TP=2 x PP=2 (or on a GPU)
starts from the same numbers, for the same padded vocabulary. The distributions are
megatron-core's: N(0, init_method_std) for embeddings, QKV, the MLP's input and the output
layer; N(0, init_method_std / sqrt(2 * num_layers)) for the attention projection and the MLP's
output; ones for the norms.

Cost: every rank draws the full tensors of its own stage (a TP shard is cut from them), one
generator at a time: measured 0.27 G values/s on one core here, i.e. ~5 s for the 1.2B student,
~30 s per rank for an 8B model without PP (PP divides it, TP does not). `mkd init` writes the
result once as a seed checkpoint for runs that should not pay it (checkpoint.load).
"""

from __future__ import annotations

import hashlib
import math
import re

import torch

from megatron_kd.config.schema import ModelConfig
from megatron_kd.errors import SetupError

_SCALED = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight", "linear_fc2.weight")
_NORMAL = ("embedding.word_embeddings.weight", "output_layer.weight", "self_attention.linear_qkv.weight",
           "mlp.linear_fc1.weight", "linear_fc1.weight", "mlp.router.weight")
_EXPERT = re.compile(r"(.*\.mlp\.experts\.local_experts\.)(\d+)(\..*)")  # SequentialMLP's experts


def layout_free_name(model, local_name: str, param) -> str:
    """The parameter's name in the one-process model."""
    if getattr(param, "shared_embedding", False) and local_name.startswith("output_layer."):
        return "embedding.word_embeddings.weight"  # the last stage's copy of tied embeddings
    m = re.match(r"decoder\.layers\.(\d+)\.(.*)", local_name)
    if m:
        layer = model.decoder.layers[int(m.group(1))]
        local_name = f"decoder.layers.{layer.layer_number - 1}.{m.group(2)}"
    e = _EXPERT.match(local_name)
    if e:  # an expert-parallel rank holds experts [rank * local, (rank + 1) * local) of the layer
        from megatron.core import parallel_state

        local = len(model.decoder.layers[int(m.group(1))].mlp.experts.local_experts)
        index = parallel_state.get_expert_model_parallel_rank() * local + int(e.group(2))
        return f"{e.group(1)}{index}{e.group(3)}"
    return local_name


def _tp_of(name: str, tp: int, tp_rank: int) -> tuple[int, int]:
    """(split, rank) of the tensor-parallel group a parameter is sharded over: the experts'
    (expert TP) for an expert's weights, the model's otherwise."""
    if _EXPERT.match(name):
        from megatron.core import parallel_state

        return (parallel_state.get_expert_tensor_parallel_world_size(),
                parallel_state.get_expert_tensor_parallel_rank())
    return tp, tp_rank


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _shard(full: torch.Tensor, param, name: str, tp: int, rank: int, gated: bool) -> torch.Tensor:
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    if gated and name.endswith("linear_fc1.weight"):
        # SwiGLU's fused input: logically [gate; up], each rank holds [gate_r; up_r] (what
        # megatron-core's checkpoints assume when they reshard it)
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(tp, dim=dim)[rank], up.chunk(tp, dim=dim)[rank]], dim=dim)
    return full.chunk(tp, dim=dim)[rank]


@torch.no_grad()
def init_by_name(gpt, model_cfg: ModelConfig, seed: int, tp: int, tp_rank: int) -> None:
    """Overwrite every parameter of this rank's `gpt` (a megatron-core GPTModel stage) with its
    layout-free draw (see the module doc)."""
    std = model_cfg.init_method_std
    scaled = std / math.sqrt(2.0 * model_cfg.num_layers)
    for local_name, param in gpt.named_parameters():
        name = layout_free_name(gpt, local_name, param)
        if name.endswith(("layernorm.weight", "norm.weight", "layer_norm_weight")):
            param.fill_(1.0)  # norms (Transformer Engine fuses them into linear_qkv / linear_fc1)
            continue
        if name.endswith(("layer_norm_bias", ".bias")):
            param.zero_()
            continue
        if name.endswith(_SCALED):
            sigma = scaled
        elif name.endswith(_NORMAL):
            sigma = std
        else:
            raise SetupError(f"no initialisation rule for parameter {local_name}; add one to "
                             "megatron_kd/models/init.py")
        group, rank = _tp_of(name, tp, tp_rank)
        split = group if getattr(param, "tensor_model_parallel", False) else 1
        shape = list(param.shape)
        if split > 1:
            shape[param.partition_dim] *= split
        full = torch.empty(shape, dtype=torch.float32).normal_(0.0, sigma, generator=_generator(seed, name))
        param.copy_(_shard(full, param, name, split, rank, gated=True))
