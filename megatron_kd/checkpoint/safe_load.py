"""Checkpoint loading that cannot run code.

torch's distributed-checkpoint reader unpickles a checkpoint's `.metadata` with plain
`pickle.load`, and its default planner `torch.load`s every non-tensor item (megatron-core's
common state, `_extra_state`) with `weights_only=False`. A pickle can name any callable, so a
checkpoint from shared storage could run code the moment it is loaded. Before megatron-core
reads a checkpoint, `check_checkpoint_pickles` reads every pickle in it the restricted way:

- `.metadata` with an unpickler that resolves only the classes distributed-checkpoint metadata
  is made of (`_ALLOWED`, the torch dtypes and layouts), no persistent ids;
- every non-tensor item the metadata lists (bytes at an offset of a `.distcp` file) with
  `torch.load(weights_only=True)`: tensors and plain containers only;
- any other `*.pt` file in the checkpoint (`common.pt`, `rng/rank*.pt`) the same way.

A pickle that names anything else is refused in one line before anything is unpickled for
real, so the loaders that follow see only data that the restricted readers accepted. The check
is a read of the metadata and of the small non-tensor items, not of the tensor data.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from megatron_kd.errors import ConfigError

METADATA_FILE = ".metadata"
_DCP = "torch.distributed.checkpoint"
# (module, name) the `.metadata` pickle of torch 2.x distributed checkpoints is built from:
# dataclasses of metadata and save plans, an enum, torch.Size and the layout lookup.
_ALLOWED = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # looks a layout up by name, nothing else
    ("collections", "OrderedDict"),
    (f"{_DCP}.filesystem", "_StorageInfo"),
    *((f"{_DCP}.metadata", n) for n in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                        "TensorStorageMetadata", "BytesStorageMetadata",
                                        "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")),
    *((f"{_DCP}.planner", n) for n in ("SavePlan", "WriteItem", "WriteItemType", "TensorWriteData",
                                       "LoadPlan", "ReadItem", "LoadItemType")),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module == "torch" and _is_dtype_or_layout(name)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which checkpoint metadata never holds")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds a persistent id, which checkpoint metadata never holds")


def _is_dtype_or_layout(name: str) -> bool:
    import torch

    return isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format))


def _refuse(path: Path, why: str) -> ConfigError:
    return ConfigError(f"refused to load {path}: {why}; a forged or corrupt checkpoint (nothing in it "
                       "was run): use a checkpoint written by megatron_kd or megatron-core")


def read_metadata(directory: Path):
    """The distributed-checkpoint metadata of `directory`, read without running code."""
    path = Path(directory) / METADATA_FILE
    try:
        with open(path, "rb") as f:
            metadata = _RestrictedUnpickler(f).load()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; point at a complete checkpoint") from exc
    except Exception as exc:  # any unpickling failure: the file is not what torch writes
        raise _refuse(path, f"its metadata pickle is not plain checkpoint metadata ({str(exc)[:160]})") from exc
    if type(metadata).__name__ != "Metadata" or not isinstance(getattr(metadata, "storage_data", None), dict):
        raise _refuse(path, f"its metadata is a {type(metadata).__name__}, not checkpoint metadata")
    return metadata


def _weights_only(path: Path, data: bytes | None, what: str) -> None:
    import torch

    try:
        torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _refuse(path, f"{what} is not a plain tensor pickle ({str(exc).splitlines()[0][:160]})") from exc


def check_checkpoint_pickles(directory: str | Path) -> None:
    """Refuse `directory` (one line, nothing unpickled for real) unless every pickle in it holds
    only checkpoint metadata, tensors and plain containers. See the module docstring."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    directory = Path(directory)
    if (directory / METADATA_FILE).exists():
        metadata = read_metadata(directory)
        byte_items = {k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)}
        for index, info in metadata.storage_data.items():
            if getattr(index, "fqn", None) not in byte_items:
                continue
            rel = Path(str(info.relative_path))
            if rel.is_absolute() or ".." in rel.parts:
                raise _refuse(directory / METADATA_FILE, f"an item points outside the checkpoint ({rel})")
            if info.transform_descriptors:
                raise _refuse(directory / rel, f"item {index.fqn} is stored with transforms "
                                               f"{list(info.transform_descriptors)}, which megatron_kd never writes")
            try:
                with open(directory / rel, "rb") as f:
                    f.seek(int(info.offset))
                    data = f.read(int(info.length))
            except (OSError, ValueError, TypeError) as exc:
                raise _refuse(directory / rel, f"item {index.fqn} cannot be read ({exc})") from exc
            _weights_only(directory / rel, data, f"item {index.fqn}")
    for path in sorted(directory.rglob("*.pt")):
        _weights_only(path, None, "it")
