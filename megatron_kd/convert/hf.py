"""Hugging Face <-> megatron-core checkpoints for Llama-family, Qwen3, Qwen3-MoE and Mixtral models.

hf_to_mcore: a HF directory (config.json, *.safetensors [+ index], tokenizer files) becomes a
megatron_kd checkpoint directory: megatron-core dist_checkpointing files (reshardable: they load
at any TP/PP), mkd_state.json, config.yaml, model.yaml (a model recipe, usable as `teacher.model`)
and the tokenizer files. Tensors are streamed from safetensors one at a time into the model, so
no second full copy of the weights is ever held. Vocabulary padding is added on import.

mcore_to_hf: the reverse (padding removed), written as sharded safetensors with an index.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from megatron_kd.config.schema import ModelConfig
from megatron_kd.config.validate import moe_layers
from megatron_kd.errors import ConfigError
from megatron_kd.jsonio import read_json
from megatron_kd.models.hf_config import hf_moe_family

log = logging.getLogger("megatron_kd.convert")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "generation_config.json")


# --- tensor name and layout mapping -------------------------------------------------------

# A SwiGLU MLP's gate, up and down projections: Llama's and Qwen's (and each Qwen3-MoE expert's)
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")
# An MoE layer's Hugging Face names: the sparse block (its router is BLOCK.gate) and an expert's
# gate, up and down projections (BLOCK.experts.E.NAME)
MOE_NAMES = {"qwen3_moe": ("mlp.", MLP_NAMES), "mixtral": ("block_sparse_moe.", ("w1", "w3", "w2"))}

def _qkv_from_hf(q, k, v, m: ModelConfig) -> torch.Tensor:
    """megatron-core's fused QKV: per query group, its query heads then one key and one value."""
    heads, groups = m.num_attention_heads, m.num_query_groups or m.num_attention_heads
    hd = m.kv_channels or m.hidden_size // heads
    q = q.reshape(groups, heads // groups * hd, -1)
    k = k.reshape(groups, hd, -1)
    v = v.reshape(groups, hd, -1)
    return torch.cat([q, k, v], dim=1).reshape(-1, q.shape[-1])


def _qkv_to_hf(qkv, m: ModelConfig):
    heads, groups = m.num_attention_heads, m.num_query_groups or m.num_attention_heads
    hd = m.kv_channels or m.hidden_size // heads
    x = qkv.reshape(groups, (heads // groups + 2) * hd, -1)
    q, k, v = torch.split(x, [heads // groups * hd, hd, hd], dim=1)
    return (q.reshape(heads * hd, -1), k.reshape(groups * hd, -1), v.reshape(groups * hd, -1))


def _layer_pairs(i: int, m: ModelConfig, moe: bool) -> list[tuple[str, tuple[str, ...]]]:
    """Layer i's tensors: (megatron name, HF names). One HF name is copied as it is; two are
    SwiGLU's gate and up, concatenated into megatron's linear_fc1; three are q, k and v, fused.
    An MoE layer (Qwen3-MoE's or Mixtral's sparse block) has a router and the routed experts in
    place of the MLP; at EP=1 megatron-core names its experts local_experts.0 .. num_experts - 1."""
    h, mc = f"model.layers.{i}.", f"decoder.layers.{i}."
    out = [(mc + "input_layernorm.weight", (h + "input_layernorm.weight",)),
           (mc + "self_attention.linear_qkv.weight",
            tuple(h + f"self_attn.{x}_proj.weight" for x in "qkv")),
           (mc + "self_attention.linear_proj.weight", (h + "self_attn.o_proj.weight",)),
           (mc + "pre_mlp_layernorm.weight", (h + "post_attention_layernorm.weight",))]
    if m.qk_layernorm:
        out += [(mc + "self_attention.q_layernorm.weight", (h + "self_attn.q_norm.weight",)),
                (mc + "self_attention.k_layernorm.weight", (h + "self_attn.k_norm.weight",))]
    mlps, (gate, up, down) = [(mc + "mlp.", h + "mlp.")], MLP_NAMES
    if moe:
        block, (gate, up, down) = MOE_NAMES[hf_moe_family(m)]
        out.append((mc + "mlp.router.weight", (h + block + "gate.weight",)))
        mlps = [(mc + f"mlp.experts.local_experts.{e}.", h + f"{block}experts.{e}.") for e in range(m.moe.num_experts)]
    for ours, theirs in mlps:
        out += [(ours + "linear_fc1.weight", (theirs + gate + ".weight", theirs + up + ".weight")),
                (ours + "linear_fc2.weight", (theirs + down + ".weight",))]
    return out


def _to_megatron(hf: list[torch.Tensor], m: ModelConfig) -> torch.Tensor:
    if len(hf) == 3:
        return _qkv_from_hf(*hf, m)
    return torch.cat(hf) if len(hf) == 2 else hf[0]


def _from_megatron(t: torch.Tensor, n: int, m: ModelConfig) -> tuple[torch.Tensor, ...]:
    if n == 3:
        return _qkv_to_hf(t, m)
    return tuple(torch.chunk(t, 2, dim=0)) if n == 2 else (t,)


class SafetensorsReader:
    """Lazy access to the tensors of a HF directory (single file or sharded with an index)."""

    def __init__(self, hf_dir: Path):
        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index, dict, "Hugging Face weight index").get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConfigError(f"{index} has no 'weight_map' mapping; restore or re-download it")
            bad = next((f for f in weight_map.values() if not isinstance(f, str) or Path(f).name != f), None)
            if bad is not None:  # shards lie beside the index: a path elsewhere is not read
                raise ConfigError(f"{index} maps tensors to {bad!r}, not a file name in {hf_dir}; restore or "
                                  "re-download it")
        elif (hf_dir / "model.safetensors").is_file():
            weight_map = {k: "model.safetensors" for k in self._file(hf_dir / "model.safetensors").keys()}
        else:
            raise ConfigError(f"no safetensors weights in {hf_dir} (model.safetensors or its index); "
                              "only safetensors checkpoints are read (never pickles)")
        self.dir, self.map, self._open, self.read = hf_dir, weight_map, {}, set()

    @staticmethod
    def _file(path: Path):
        from safetensors import SafetensorError, safe_open

        try:
            return safe_open(path, "pt")
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"cannot read {path} ({str(exc).splitlines()[0][:120]}): it is truncated or "
                              "not a safetensors file; re-download it") from None

    def get(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError

        if name not in self.map:
            raise ConfigError(f"tensor {name} missing from the Hugging Face checkpoint {self.dir}")
        file = self.map[name]
        if file not in self._open:
            self._open[file] = self._file(self.dir / file)
        try:
            tensor = self._open[file].get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"cannot read tensor {name} from {self.dir / file} ({str(exc)[:120]}): the file "
                              "is damaged; re-download it") from None
        self.read.add(name)
        return tensor

    def unread(self) -> list[str]:
        """The tensors no get() asked for, less those conversion may leave (RoPE's cached inverse
        frequencies, which the model recomputes, and an output layer the model ties to its embedding)."""
        skippable = ("rotary_emb.inv_freq", "lm_head.weight")
        return sorted(n for n in self.map if n not in self.read and not n.endswith(skippable))

    def __contains__(self, name: str) -> bool:
        return name in self.map


def _progress(what: str, i: int, n: int) -> None:
    import sys

    bar = "#" * (20 * (i + 1) // n)
    end = "\n" if i + 1 == n else ""
    print(f"\r  {what} [{bar:<20}] layer {i + 1}/{n}", end=end, file=sys.stderr, flush=True)


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, torch.zeros(rows - t.shape[0], *t.shape[1:], dtype=t.dtype)], dim=0)


@torch.no_grad()
def load_hf_weights(model, reader: SafetensorsReader, m: ModelConfig) -> None:
    """Copy HF tensors into a TP=1, PP=1, EP=1 megatron GPTModel, one tensor at a time."""
    params = dict(model.named_parameters())
    done = set()

    def put(name: str, value: torch.Tensor):
        p = params[name]
        if value.shape != p.shape:
            raise ConfigError(f"{name}: Hugging Face tensor of shape {tuple(value.shape)} does not fit "
                              f"{tuple(p.shape)}; the config and weights disagree")
        p.copy_(value.to(p.dtype))
        done.add(name)

    rows = params["embedding.word_embeddings.weight"].shape[0]
    put("embedding.word_embeddings.weight", _pad_rows(reader.get("model.embed_tokens.weight"), rows))
    for i, moe in enumerate(moe_layers(m)):
        _progress("import", i, m.num_layers)
        for mc, hf in _layer_pairs(i, m, moe):
            put(mc, _to_megatron([reader.get(name) for name in hf], m))
    put("decoder.final_layernorm.weight", reader.get("model.norm.weight"))
    if m.untie_embeddings_and_output_weights:
        put("output_layer.weight", _pad_rows(reader.get("lm_head.weight"), rows))
    missing = set(params) - done
    if missing:
        raise ConfigError(f"no Hugging Face tensor for {sorted(missing)[:5]}; unsupported layout")
    unread = reader.unread()
    if unread:  # more experts or layers than config.json says, or blocks this model has no place for
        raise ConfigError(f"{len(unread)} tensor(s) of {reader.dir} have no place in the model its config.json "
                          f"describes (first: {unread[0]}); the config and weights disagree: restore config.json")


@torch.no_grad()
def iter_hf_tensors(model, m: ModelConfig):
    """(HF name, tensor) pairs of a TP=1, PP=1, EP=1 megatron GPTModel, padding removed."""
    p = dict(model.named_parameters())
    yield "model.embed_tokens.weight", p["embedding.word_embeddings.weight"][: m.vocab_size]
    for i, moe in enumerate(moe_layers(m)):
        _progress("export", i, m.num_layers)
        for mc, hf in _layer_pairs(i, m, moe):
            yield from zip(hf, _from_megatron(p[mc], len(hf), m))
    yield "model.norm.weight", p["decoder.final_layernorm.weight"]
    if m.untie_embeddings_and_output_weights:
        yield "lm_head.weight", p["output_layer.weight"][: m.vocab_size]


def check_links(src: Path) -> None:
    """Every file of `src` that conversion reads or copies stays inside it: a symbolic link to
    elsewhere (a `tokenizer.json` pointing at ~/.ssh/id_rsa) would be copied into a checkpoint
    others load. The one layout allowed besides is the Hugging Face hub cache's, where a
    snapshot's files link to the model's `blobs/` (models--NAME/snapshots/REV/* -> ../../blobs/*)."""
    src = Path(src)
    root = src.resolve()
    hub_blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    for f in sorted(src.iterdir()):
        if not f.is_symlink():
            continue
        target = f.resolve()
        inside = target.is_relative_to(root) or (hub_blobs is not None and target.is_relative_to(hub_blobs))
        if not inside:
            raise ConfigError(f"{f} is a link to {target}, outside {src}; conversion reads and copies only "
                              "files inside the directory: replace the link by the file itself")


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    check_links(src)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied
