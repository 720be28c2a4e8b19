"""Datasets through megatron-core's GPTDataset / BlendedMegatronDatasetBuilder.

Training: a weighted blend of IndexedDataset prefixes with a train/valid/test split. Validation:
any number of *named* sets (in-domain, OOD, ...), each evaluated separately; a non-zero valid
part of `data.split` adds one more, named "heldout". Or megatron-core's mock dataset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_kd.config.schema import RunConfig
from megatron_kd.config.validate import parse_split
from megatron_kd.data.identity import index_cache_key
from megatron_kd.data.tokenizer import Tokenizer
from megatron_kd.errors import ConfigError
from megatron_kd.jsonio import read_json


@dataclass
class TokenizerInfo:
    """The few tokenizer facts megatron-core's datasets read, for mock data (no tokenizer file)."""

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

    def describe(self) -> dict:
        return {"kind": "mock", "vocab_size": self.vocab_size, "eod": self.eod}


def load_tokenizer(cfg: RunConfig):
    """The run's tokenizer, checked against the model's vocabulary."""
    if cfg.data.mock and cfg.data.tokenizer is None:
        return TokenizerInfo(vocab_size=cfg.model.vocab_size, eod=cfg.model.vocab_size - 1)
    tok = Tokenizer(cfg.data.tokenizer, cfg.data.eod_token)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"tokenizer {cfg.data.tokenizer} has {tok.vocab_size} tokens but model.vocab_size="
            f"{cfg.model.vocab_size}; set model.vocab_size={tok.vocab_size}")
    return tok


# megatron-core's .idx layout (MMIDIDX v1): header, version <Q, dtype code <B, sequence count <Q,
# document count <Q, then int32 lengths, int64 pointers (one per sequence), int64 document ids.
_IDX_MAGIC = b"MMIDIDX\x00\x00"
_IDX_DTYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}
_IDX_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
               8: np.uint16}


def read_index(idx: Path, what: str) -> tuple[int, int, type]:
    """(tokens, bytes per token, numpy dtype) from a .idx, every size checked against the file's; read here
    rather than by megatron-core, whose reader asserts (and leaves noisy half-built objects)."""
    corrupt = f"{what}: {idx} is corrupt or truncated"
    fix = "; re-run `mkd data preprocess`"
    size = idx.stat().st_size
    with open(idx, "rb") as f:
        head = f.read(34)
        if len(head) < 34 or head[:9] != _IDX_MAGIC:
            raise ConfigError(f"{corrupt} (not a megatron .idx header){fix}")
        version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:34])
        if version != 1 or code not in _IDX_DTYPE_SIZES:
            raise ConfigError(f"{corrupt} (version {version}, dtype code {code}){fix}")
        need = 34 + 12 * n_seq + 8 * n_doc
        if size < need:
            raise ConfigError(f"{corrupt} ({size} bytes, its header needs {need}){fix}")
        lengths = np.fromfile(f, dtype=np.int32, count=n_seq)
    if (lengths < 0).any():
        raise ConfigError(f"{corrupt} (negative sequence lengths){fix}")
    return int(lengths.sum(dtype=np.int64)), _IDX_DTYPE_SIZES[code], _IDX_DTYPES[code]


def largest_token_id(bin_: Path, dtype) -> int:
    """The largest token id in a .bin, read through a memory map in 64 MiB slices (vectorised;
    the cost per GB is in docs/PERFORMANCE.md, "Measured times")."""
    data = np.memmap(bin_, dtype=dtype, mode="r")
    step = (64 << 20) // data.itemsize
    return max((int(data[i:i + step].max()) for i in range(0, len(data), step)), default=-1)


def check_prefix(prefix: str, tokenizer, what: str, token_ids: bool = False,
                 trust_unverified: bool = False) -> int:
    """Fail clearly on a missing, truncated or foreign dataset; returns its token count.
    `token_ids`: also read the whole .bin for ids beyond the vocabulary (once per launch, in the
    preflight; not on every rank). Data without a record of its tokenizer is refused unless
    `trust_unverified` (data.trust_unverified): ids of another tokenizer would train silently."""
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    for f in (idx, bin_):
        if not f.is_file():
            raise ConfigError(f"{what} '{prefix}': {f} not found; create it with "
                              "`mkd data preprocess` (or `mkd data corpus`)")
    meta = None
    if Path(f"{prefix}.meta.json").is_file():
        meta = read_json(Path(f"{prefix}.meta.json"), dict, f"{what} tokenizer record")
    sha = getattr(tokenizer, "sha256", None)
    if meta and sha and meta.get("tokenizer_sha256") not in (None, sha):
        raise ConfigError(
            f"{what} '{prefix}' was tokenized with another tokenizer (sha256 "
            f"{meta['tokenizer_sha256'][:12]}…) than data.tokenizer ({sha[:12]}…); "
            "re-run `mkd data preprocess` with the model's tokenizer")
    tokens, dtype_size, dtype = read_index(idx, f"{what} '{prefix}'")
    expected = tokens * dtype_size
    if bin_.stat().st_size != expected:
        raise ConfigError(f"{what} '{prefix}': {bin_} has {bin_.stat().st_size} bytes but its "
                          f"index describes {expected}; the pair is truncated or mismatched: "
                          "re-run `mkd data preprocess`")
    if tokens == 0:
        raise ConfigError(f"{what} '{prefix}' is empty (0 tokens); preprocess a corpus with "
                          "documents into it, or drop it from the recipe")
    if sha and not (meta and meta.get("tokenizer_sha256")) and not trust_unverified:
        raise ConfigError(f"{what} '{prefix}' has no record of the tokenizer it was made with "
                          f"({prefix}.meta.json); re-run `mkd data preprocess` with data.tokenizer, or set "
                          "data.trust_unverified=true if it was made with this tokenizer (e.g. by "
                          "Megatron-LM's tools/preprocess_data.py)")
    vocab = getattr(tokenizer, "vocab_size", None)
    if token_ids and vocab is not None:
        top = largest_token_id(bin_, dtype)
        if top >= vocab:
            raise ConfigError(f"{what} '{prefix}': token id {top} in {bin_} is not below the tokenizer's "
                              f"vocabulary of {vocab}; the data was made with another tokenizer or is "
                              "corrupt: re-run `mkd data preprocess`")
    return tokens


def index_cache_dir(cfg: RunConfig, prefixes: list[str]) -> Path:
    """Where megatron-core keeps its dataset index files (sample and shuffle indices) for these
    prefixes: under RUN_DIR/data_cache, in a directory named by their content (data/identity.py).
    megatron-core names its files by the prefixes' paths and the config only, so data tokenized
    again at the same path would reuse the old index (an IndexError at the first step, or the
    wrong samples); a fresh directory makes it build the index for what the files hold now."""
    return Path(cfg.run.dir) / "data_cache" / ("mock" if not prefixes else index_cache_key(prefixes))


def _gpt_config(cfg: RunConfig, tokenizer, prefixes: list[str], **kwargs):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=cfg.data.seed if cfg.data.seed is not None else cfg.run.seed,
        sequence_length=cfg.train.seq_length,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=str(index_cache_dir(cfg, prefixes)),
        **kwargs,
    )


def _build_on_rank0_first(build):
    """Rank 0 writes megatron-core's index cache, the others then read it (no write races)."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    result = build() if rank == 0 else None
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return build() if rank != 0 else result


def build_datasets(cfg: RunConfig, tokenizer, num_train_samples: int):
    """(train dataset, {name: (valid dataset, number of sequences to evaluate)})."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, MockGPTDataset

    seq = cfg.train.seq_length
    n_eval = cfg.logging.eval_samples
    if cfg.data.mock:
        config = _gpt_config(cfg, tokenizer, [], split="98,2,0")
        train, valid, _ = _build_on_rank0_first(lambda: BlendedMegatronDatasetBuilder(
            MockGPTDataset, [num_train_samples, n_eval, 0], lambda: True, config).build())
        return train, {"mock": (valid, n_eval)}

    trust = cfg.data.trust_unverified
    tokens = {p: check_prefix(p, tokenizer, "data.train", trust_unverified=trust) for p in cfg.data.train}
    split = parse_split(cfg.data.split)
    weights = cfg.data.train_weights
    config = _gpt_config(cfg, tokenizer, list(cfg.data.train), blend=(list(cfg.data.train), weights),
                         split=cfg.data.split)
    heldout_n = 0
    if split[1] > 0:
        heldout_tokens = sum(tokens.values()) * split[1] / sum(split)
        heldout_n = min(n_eval, max(0, int((heldout_tokens - 1) // seq)))
    sizes = [num_train_samples, heldout_n if heldout_n else 0, 0]
    train, heldout, _ = _build_on_rank0_first(lambda: BlendedMegatronDatasetBuilder(
        GPTDataset, sizes, lambda: True, config).build())
    valid = {}
    if heldout is not None and heldout_n:
        valid["heldout"] = (heldout, heldout_n)
    for name, prefix in cfg.data.valid.items():
        n_tokens = check_prefix(prefix, tokenizer, f"data.valid.{name}",
                                trust_unverified=cfg.data.trust_unverified)
        n = min(n_eval, (n_tokens - 1) // seq)
        if n < 1:
            raise ConfigError(f"data.valid.{name} '{prefix}' has {n_tokens} tokens, fewer than one "
                              f"sequence of train.seq_length={seq}")
        vconfig = _gpt_config(cfg, tokenizer, [prefix], blend_per_split=[None, ([prefix], None), None])
        _, ds, _ = _build_on_rank0_first(lambda: BlendedMegatronDatasetBuilder(
            GPTDataset, [0, n, 0], lambda: True, vconfig).build())
        valid[name] = (ds, n)
    return train, valid
