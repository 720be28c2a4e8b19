"""What a path given for a checkpoint means, in one place: a checkpoint directory, a run
directory (its latest checkpoint) or a Hugging Face directory (converted once, cached); the
state file every checkpoint carries; and the config a checkpoint was saved with, padded
vocabulary applied. Reads files only (no torch), so the CLI can answer before any process
group starts.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from megatron_kd.checkpoint import megatron_lm
from megatron_kd.checkpoint.hf_cache import ensure_converted
from megatron_kd.config.loader import build_dataclass, load_config, load_recipe_dict
from megatron_kd.config.overrides import override
from megatron_kd.config.schema import ModelConfig, RunConfig
from megatron_kd.errors import ConfigError
from megatron_kd.files import write_text_atomic

STATE_FILE = "mkd_state.json"  # step, tokens, kind, padded vocabulary, file sizes
LATEST = "latest"  # RUN_DIR/checkpoints/latest names the newest complete checkpoint


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / STATE_FILE).is_file()


def is_hf_dir(path: str | Path) -> bool:
    """A Hugging Face model directory (config.json) that is not one of our checkpoints (a
    converted checkpoint keeps the HF tokenizer files but has a state file)."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and not is_checkpoint(p)


def read_state(path: str | Path) -> dict:
    f = Path(path) / STATE_FILE
    if not f.is_file():
        raise ConfigError(f"'{path}' is not a megatron_kd checkpoint (no {STATE_FILE}); "
                          "point at a directory under RUN_DIR/checkpoints")
    try:
        state = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"checkpoint {path} is damaged: {f.name} is not valid JSON ({str(exc)[:120]}); "
                          "delete the checkpoint to resume from an earlier one") from exc
    problem = _schema_problem(state)
    if problem is None and "state_crc" not in state:
        problem = "has no 'state_crc' (every save writes one: it was removed or hand-written)"
    if problem is None and state_checksum(state) != state["state_crc"]:
        problem = "was edited after the save (its own checksum does not match)"
    if problem:
        raise ConfigError(f"checkpoint {path} is damaged: {f} {problem}; delete the checkpoint to "
                          "resume from an earlier one")
    return state


# key -> the types its value may have; the first three every checkpoint has
_STATE_SCHEMA = {"step": (int,), "kind": (str,), "state_crc": (str,), "tokens": (int,), "consumed_samples": (int,),
                 "padded_vocab_size": (int, type(None)), "files": (dict,), "checksums": (dict,),
                 "scheduler": (dict,), "world_size": (int,), "tokenizer": (dict, type(None)),
                 "teacher": (dict, type(None)), "data": (dict, type(None)),
                 "kd_objective": (list,)}
_REQUIRED = ("step", "kind", "tokens")


def _schema_problem(state) -> str | None:
    if not isinstance(state, dict):
        return "is not a JSON object"
    for key in _REQUIRED:
        if key not in state:
            return f"has no '{key}'"
    for key, kinds in _STATE_SCHEMA.items():
        value = state.get(key)
        if key in state and (not isinstance(value, kinds) or isinstance(value, bool)):
            return f"has '{key}': {json.dumps(value)[:40]}, not {' or '.join(k.__name__ for k in kinds)}"
    if state["step"] < 0 or state["tokens"] < 0:
        return "has a negative step or token count"
    if isinstance(state.get("padded_vocab_size"), int) and state["padded_vocab_size"] < 1:
        return "has a padded_vocab_size below 1"
    return None


def state_checksum(state: dict) -> str:
    """CRC-32 of the state's content (all keys but this one), stored in it as `state_crc`:
    a hand-edited padded_vocab_size or step would otherwise load wrong weights silently."""
    body = json.dumps({k: v for k, v in state.items() if k != "state_crc"}, sort_keys=True)
    return f"crc32:{zlib.crc32(body.encode()):08x}"


def without_location(identity: dict | None) -> dict | None:
    """A teacher identity (a checkpoint's, or a teacher cache's and its teacher's) as its content
    alone: a checkpoint is its step and state checksum (which covers every file's checksum), so
    a project moved or copied to another directory keeps its teachers and caches; a checkpoint
    recorded without a checksum keeps its path."""
    if not isinstance(identity, dict):
        return identity
    out = {k: v for k, v in identity.items() if k != "cache"}  # a cache by what it holds (its fingerprint)
    if out.get("state_crc"):
        out.pop("checkpoint", None)
    if isinstance(out.get("teacher"), dict):
        out["teacher"] = without_location(out["teacher"])
    return out


def write_state(directory: Path, meta: dict) -> None:
    """Write the state file of a checkpoint whose other files are all written: `meta` plus every
    file's size and checksum (verify_checkpoint checks them) and the state's own checksum. The
    files were just written, so they are read back from the page cache (the measured cost:
    docs/PERFORMANCE.md, "Measured times")."""
    files = [f for f in sorted(directory.rglob("*")) if f.is_file() and f.name != STATE_FILE]
    meta = dict(meta, files={str(f.relative_to(directory)): f.stat().st_size for f in files},
                checksums={str(f.relative_to(directory)): file_checksum(f) for f in files})
    meta["state_crc"] = state_checksum(meta)
    write_text_atomic(directory / STATE_FILE, json.dumps(meta, indent=2))


def file_checksum(path: Path) -> str:
    """CRC-32 of a file's bytes (zlib: ~1 GB/s; enough to catch flipped bytes and files
    swapped or rewritten with the same size, which the size manifest cannot)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            crc = zlib.crc32(chunk, crc)
    return f"crc32:{crc:08x}"


def verify_checkpoint(path: str | Path) -> dict:
    """The checkpoint's state, after checking every file it was saved with is there, whole
    (sizes recorded at save time) and unchanged (a checksum per file, when the checkpoint has
    them): a truncated, partly copied or corrupted checkpoint fails here, with its name, before
    any process group starts; and that every pickle in it is plain data (safe_load)."""
    path = Path(path)
    state = read_state(path)
    for rel, size in (state.get("files") or {}).items():
        f = path / rel
        have = f.stat().st_size if f.is_file() else None
        if have != size:
            found = "is missing" if have is None else f"has {have} bytes, {size} were written"
            raise ConfigError(f"checkpoint {path} is incomplete: {rel} {found} (truncated or partly "
                              "copied); delete it to resume from an earlier checkpoint, or point "
                              "at a complete one")
    for rel, want in (state.get("checksums") or {}).items():
        f = path / rel
        if not f.is_file():
            raise ConfigError(f"checkpoint {path} is incomplete: {rel} is missing; delete it to resume "
                              "from an earlier checkpoint, or point at a complete one")
        if file_checksum(f) != want:
            raise ConfigError(f"checkpoint {path} is corrupt: {rel} does not match the checksum written "
                              "with it (changed after the save); delete it to resume from an earlier "
                              "checkpoint, or point at a good copy")
    from megatron_kd.checkpoint.safe_load import check_checkpoint_pickles  # lazy: it imports torch

    check_checkpoint_pickles(path)  # every pickle in it holds data only (nothing runs on load)
    return state


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under RUN_DIR/checkpoints whose save completed (real directories
    of this run: symbolic links are not followed, so a link loop or a link to another run's
    checkpoint is never taken for one)."""
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if not p.is_symlink() and p.is_dir()
            and not p.name.endswith(".partial") and is_checkpoint(p)]


def latest_checkpoint(root: Path) -> Path | None:
    """What `latest` names; if that is gone (a save killed while replacing a checkpoint of the
    same name), the complete checkpoint with the most steps. `latest` may only name a
    checkpoint directory of this run (a plain name in `root`)."""
    pointer = root / LATEST
    if pointer.is_file():
        try:
            name = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{pointer} is unreadable ({exc}); delete it (the newest complete "
                              "checkpoint is then used)") from exc
        path = root / name
        if not name or Path(name).name != name or name in (".", "..") or path.is_symlink():
            raise ConfigError(f"{pointer} names {name[:80]!r}, not a checkpoint of this run; delete it "
                              "(the newest complete checkpoint is then used)")
        if is_checkpoint(path):
            return path
    found = complete_checkpoints(root)
    return max(found, key=lambda p: read_state(p)["step"]) if found else None


def resolve_checkpoint(ref: str | Path) -> Path:
    """A checkpoint directory as given; a run directory: its latest checkpoint; a Hugging Face
    directory or a Megatron-LM one (a save dir or an iter_* dir): its converted checkpoint
    (converted once, then cached, see hf_cache and megatron_lm)."""
    path = Path(ref)
    if is_checkpoint(path):
        return path
    if is_hf_dir(path):
        return ensure_converted(path)
    if megatron_lm.is_megatron_lm_dir(path):
        return megatron_lm.ensure_converted(path)
    latest = latest_checkpoint(path / "checkpoints")
    if latest is not None:
        return latest
    raise ConfigError(f"'{path}' is neither a checkpoint nor a run directory with checkpoints; "
                      "pass RUN_DIR, RUN_DIR/checkpoints/NAME, a Hugging Face or a Megatron-LM directory")


def saved_model(ckpt: Path, state: dict | None = None) -> ModelConfig:
    """The ModelConfig `ckpt` was saved with, built with the padded vocabulary its weights have."""
    state = read_state(ckpt) if state is None else state
    source = ckpt / "config.yaml"
    model = build_dataclass(ModelConfig, load_recipe_dict(source).get("model", {}), "model", str(source))
    model.padded_vocab_size = state.get("padded_vocab_size") or model.padded_vocab_size
    return model


def saved_config(ckpt: Path, overrides: list[str] = (), purpose: str = "train",
                 state: dict | None = None) -> RunConfig:
    """The RunConfig `ckpt` was saved with, `overrides` applied after the padded vocabulary its
    weights have (so a later `model.padded_vocab_size=...` still wins)."""
    state = read_state(ckpt) if state is None else state
    base = []
    if state.get("padded_vocab_size"):
        base.append(override("model.padded_vocab_size", state["padded_vocab_size"]))
    return load_config(ckpt / "config.yaml", [*base, *overrides], purpose=purpose)
