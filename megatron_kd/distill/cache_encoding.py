"""How a teacher cache's rows are stored on disk: the precision of its values, the width of its
token ids and an optional zstd compression of each file (`mkd teacher-cache --dtype --zstd`).

The rows' values (the kept log-probabilities, the "other" mass, the label's log-probability and
the entropy) are stored as:
- fp32: exact (the cache equals the online teacher to float32 rounding);
- fp16: round to nearest, a relative error of at most 2^-11 on |x| >= 2^-14 and an absolute one
  of 2^-25 below; values under -65504 (never a real log-probability's magnitude; exp() of it is 0
  in float32 anyway) are clamped there (-inf, a zero mass, stays -inf). At log p = -10 that is <= 4.9e-3 nats;
- bf16: round to nearest, a relative error of at most 2^-8 (~0.4 %): ~0.04 nats at log p = -10.
  Offered for compatibility with bf16 pipelines; fp16 is the 16-bit encoding to choose.
What an error of δ_k on the kept log q_k does to the KD term: the target q_k becomes
q_k·exp(δ_k), so its L1 change is at most Σ_k q_k (exp(|δ_k|) - 1) ≈ ε·Σ_k q_k |log q_k| (ε the
relative bound): the teacher's entropy over the kept set times 2^-11 for fp16, which bounds the
change of the KD gradient (p - q) per token, and the KL value moves by at most about as much times
(1 + max |log q_k - log p_k|). `value_error_bound` states the per-entry bound; the tests check it.

Token ids take the fewest bits the vocabulary needs: uint8 up to 256 tokens, uint16 up to 65,536,
and beyond that (17 to 24 bits: 131,072 tokens is 17) the low 16 bits as uint16 plus the high
bits packed per sample ("ids_high": `bits - 16` bit planes, 1 bit per id at 17 bits).
Vocabularies above 2^24 keep int32.

A sampled cache (`--sample N`, random-sampling KD) stores no log-probabilities for its slots: each
slot's draw count (0..N) in the fewest bits N needs, packed like the high id bits; the reader turns
a count c back into log(c / N) exactly (c = 0: -inf) and the "other" mass into -inf (the draws'
estimate sums to 1), so only the label's log-probability and the entropy take value bytes. At
N = 12 and 131,072 tokens: 12 x (17 + 4) bits + 2 x 2 B = 35.5 B per token.

A format-1 cache (before encodings) is fp32 values and int32 ids without compression.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_kd.distill.cache_layout import MAX_DRAWS, VALUE_DTYPES, ZSTD_LEVELS
from megatron_kd.errors import ConfigError

VALUE_FIELDS = ("logp", "other_logp", "label_logp", "entropy")
FORMAT = 2  # the manifest's "format": 1 = fp32 / int32 (before encodings), 2 = with "encoding"
FP16_MIN = -65504.0
_STORED = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}  # bf16 as its raw bits


def value_error_bound(values: str, x: torch.Tensor) -> torch.Tensor:
    """The largest |stored - x| per entry that an encoding of the values allows."""
    x = x.double().abs()
    if values == "fp32":
        return torch.zeros_like(x)
    if values == "fp16":
        return x * 2.0 ** -11 + 2.0 ** -25
    return x * 2.0 ** -8 + 2.0 ** -134


@dataclass(frozen=True)
class Encoding:
    values: str = "fp32"
    id_bits: int = 32
    zstd: int = 0  # zstd level per file; 0 = uncompressed (and memory-mapped when read)
    draws: int = 0  # a sampled cache's draws per token: slots hold counts, not log-probabilities

    def __post_init__(self):
        if self.values not in VALUE_DTYPES:
            raise ConfigError(f"unknown cache value encoding {self.values!r}; use one of {', '.join(VALUE_DTYPES)}")
        if not 1 <= self.id_bits <= 32:
            raise ConfigError(f"cache id_bits must be in 1..32, got {self.id_bits}")
        if self.zstd not in ZSTD_LEVELS:
            raise ConfigError(f"--zstd must be a level in 0..22 (0 = off), got {self.zstd}")
        if not 0 <= self.draws <= MAX_DRAWS:
            raise ConfigError(f"--sample must be in 1..{MAX_DRAWS} draws per token (counts are stored in at "
                              f"most 8 bits), got {self.draws}")

    @classmethod
    def for_vocab(cls, vocab_size: int, values: str = "fp32", zstd: int = 0, draws: int = 0) -> "Encoding":
        return cls(values, max(1, (vocab_size - 1).bit_length()), zstd, draws)

    @classmethod
    def from_manifest(cls, m: dict, where) -> "Encoding":
        """The encoding a manifest records (format 1: fp32 / int32); one line for one this version
        does not know."""
        fmt = m.get("format", 1)
        if fmt == 1 and "encoding" not in m:
            return cls()
        e = m.get("encoding")
        if fmt != FORMAT or not isinstance(e, dict) or set(e) - {"draws"} != {"values", "id_bits", "zstd"}:
            raise ConfigError(f"teacher cache manifest {where} has format {str(fmt)[:20]} / encoding "
                              f"{str(e)[:60]}, which this version does not read (it reads format 1 and "
                              f"{FORMAT}); update megatron_kd or write the cache again")
        try:
            if not all(isinstance(e.get(k, 0), int) and not isinstance(e.get(k), bool)
                       for k in ("id_bits", "zstd", "draws")):
                raise ConfigError("id_bits, zstd and draws must be integers")
            return cls(e["values"], e["id_bits"], e["zstd"], e.get("draws", 0))
        except ConfigError as exc:
            raise ConfigError(f"teacher cache manifest {where}: {exc}; write the cache again") from exc

    def to_manifest(self) -> dict:
        out = {"values": self.values, "id_bits": self.id_bits, "zstd": self.zstd}
        return out | ({"draws": self.draws} if self.draws else {})

    def describe(self) -> str:
        ids = "int32" if self.id_bits > 24 else f"{self.id_bits}-bit"
        counts = f", {self.count_bits}-bit counts of {self.draws} draws" if self.draws else ""
        return f"{self.values} values, {ids} ids{counts}" + (f", zstd {self.zstd}" if self.zstd else "")

    # --- what is stored ---

    @property
    def _id_dtype(self):
        if self.id_bits > 24:
            return np.int32
        return np.uint8 if self.id_bits <= 8 else np.uint16

    @property
    def _high_bits(self) -> int:
        return self.id_bits - 16 if 16 < self.id_bits <= 24 else 0

    @property
    def count_bits(self) -> int:
        return self.draws.bit_length()  # counts 0..draws

    def files(self, top_k) -> dict[str, np.dtype]:
        """Each stored array's name and dtype."""
        names = ("logp", "label_logp", "entropy") if top_k == "all" else VALUE_FIELDS
        if self.draws:
            names = ("label_logp", "entropy")
        out = {name: np.dtype(_STORED[self.values]) for name in names}
        if self.draws:
            out["counts"] = np.dtype(np.uint8)
        if top_k != "all":
            out["ids"] = np.dtype(self._id_dtype)
            if self._high_bits:
                out["ids_high"] = np.dtype(np.uint8)
        return out

    def shape(self, name: str, rows: int, seq: int, width: int) -> tuple:
        """The stored array's shape in a shard of `rows` samples (`width`: K or the vocabulary)."""
        if name in ("ids_high", "counts"):
            return rows, math.ceil(seq * width * (self._high_bits if name == "ids_high" else self.count_bits) / 8)
        return (rows, seq) + ((width,) if name in ("ids", "logp") else ())

    def file_name(self, name: str) -> str:
        return f"{name}.npy" + (".zst" if self.zstd else "")

    def bytes_per_token(self, vocab_size: int, top_k) -> float:
        """Stored bytes per token before compression."""
        value = 4 if self.values == "fp32" else 2
        if top_k == "all":
            return value * (vocab_size + 2)
        id_bytes = np.dtype(self._id_dtype).itemsize + self._high_bits / 8
        if self.draws:
            return top_k * (id_bytes + self.count_bits / 8) + 2 * value
        return top_k * (value + id_bytes) + 3 * value

    # --- encoding and decoding ---

    def encode(self, rows: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Cache rows `[b, s, ...]` (float32 values, integer ids) -> the stored arrays."""
        out = {}
        for name in rows:
            if name == "ids" or (self.draws and name in ("logp", "other_logp")):
                continue
            x = rows[name].detach().cpu().float()
            if self.values == "fp16":
                # clamped into fp16's range, but a log of 0 stays -inf (an empty "other" mass)
                x = torch.where(x == -math.inf, x, x.clamp(min=FP16_MIN))
                out[name] = x.numpy().astype(np.float16)
            elif self.values == "bf16":
                out[name] = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            else:
                out[name] = x.numpy()
        if "ids" in rows:
            ids = rows["ids"].detach().cpu().numpy().astype(np.int64)
            out["ids"] = (ids & 0xFFFF if self._high_bits else ids).astype(self._id_dtype)
            if self._high_bits:
                out["ids_high"] = _pack_bits(ids >> 16, self._high_bits)
        if self.draws:
            # log(c / N) in float32 -> c exactly (N <= 255: the nearest integer is c)
            counts = torch.exp(rows["logp"].detach().cpu().double()) * self.draws
            out["counts"] = _pack_bits(counts.round().clamp(0, self.draws).numpy().astype(np.int64), self.count_bits)
        return out

    def decode(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Stored arrays (sample-major, any leading rows) -> rows: float32 values, int32 ids."""
        out = {}
        for name, a in arrays.items():
            if name in ("ids", "ids_high", "counts"):
                continue
            if self.values == "bf16":
                out[name] = torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16).float()
            else:
                out[name] = torch.from_numpy(np.asarray(a, dtype=np.float32))
        if "ids" in arrays:
            ids = np.asarray(arrays["ids"]).astype(np.int32)
            if self._high_bits:
                ids |= _unpack_bits(arrays["ids_high"], self._high_bits, ids.shape).astype(np.int32) << 16
            out["ids"] = torch.from_numpy(ids)
            if "counts" in arrays:
                counts = torch.from_numpy(_unpack_bits(arrays["counts"], self.count_bits, ids.shape).astype(np.float64))
                out["logp"] = torch.log(counts / self.draws).float()  # log 0 = -inf: an undrawn slot
                out["other_logp"] = torch.full(ids.shape[:-1], -math.inf)
        return out

    # --- files ---

    def save(self, path: Path, array: np.ndarray) -> None:
        if not self.zstd:
            np.save(path, array)
            return
        import zstandard

        buf = io.BytesIO()
        np.save(buf, array)
        Path(path).write_bytes(zstandard.ZstdCompressor(level=self.zstd).compress(buf.getvalue()))

    def load(self, path: Path, max_bytes: int | None = None) -> np.ndarray:
        """A stored array: memory-mapped when uncompressed, else decompressed whole, but never
        past `max_bytes` (what the manifest's shape takes: `stored_bytes`): a frame that claims or
        inflates to more is refused (ShardTooLarge) before it is held in memory."""
        if not self.zstd:
            return np.load(path, mmap_mode="r")
        import zstandard

        raw = Path(path).read_bytes()
        try:
            claimed = zstandard.frame_content_size(raw)  # -1: the frame does not say
            if max_bytes is not None and claimed > max_bytes:
                raise ShardTooLarge(max_bytes)
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw))
            data = _read_at_most(reader, max_bytes)
        except zstandard.ZstdError as exc:
            raise ValueError(f"not a zstd frame ({exc})") from exc
        return np.load(io.BytesIO(data))


class ShardTooLarge(ValueError):
    """A compressed file that decompresses past the size its recorded shape allows."""

    def __init__(self, limit: int):
        super().__init__(f"decompresses past its recorded size of {limit} bytes")
        self.limit = limit


NPY_HEADER_MAX = 65536 + 10  # a .npy (format 1.0) header: magic, version, length and at most 65,535 bytes


def stored_bytes(shape: tuple, dtype) -> int:
    """The most bytes a .npy of this shape and dtype can take (its payload and any header)."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize + NPY_HEADER_MAX


def _read_at_most(reader, limit: int | None) -> bytes:
    """Everything `reader` yields, or ShardTooLarge as soon as it passes `limit` bytes."""
    pieces, total = [], 0
    while piece := reader.read(16 << 20):
        total += len(piece)
        if limit is not None and total > limit:
            raise ShardTooLarge(limit)
        pieces.append(piece)
    return b"".join(pieces)


def _pack_bits(x: np.ndarray, bits: int) -> np.ndarray:
    """Integers `[n, ...]` in 0..2^bits-1 -> uint8 `[n, ceil(m * bits / 8)]`: each value's low
    `bits` bits (least significant first), the values of a row one after the other."""
    planes = np.unpackbits(x.astype(np.uint8)[..., None], axis=-1, bitorder="little")[..., :bits]
    return np.packbits(planes.reshape(x.shape[0], -1), axis=-1)


def _unpack_bits(packed: np.ndarray, bits: int, shape: tuple) -> np.ndarray:
    """The inverse of `_pack_bits`: uint8 values of `shape`."""
    count = int(np.prod(shape[1:])) * bits
    planes = np.unpackbits(np.asarray(packed), axis=-1, count=count)
    return np.packbits(planes.reshape(shape[0], -1, bits), axis=-1, bitorder="little").reshape(shape)
