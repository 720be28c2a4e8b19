"""What a path given for a checkpoint means, in one place: a checkpoint directory, a run
directory (its latest checkpoint) or a Hugging Face directory (converted once, cached); the
state file every checkpoint carries; and the config a checkpoint was saved with, padded
vocabulary applied. Reads files only (no torch), so the CLI can answer before any process
group starts.
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_kd.checkpoint.hf_cache import ensure_converted
from megatron_kd.config.loader import build_dataclass, load_config, load_recipe_dict
from megatron_kd.config.schema import ModelConfig, RunConfig
from megatron_kd.errors import ConfigError

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
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"checkpoint {path} is damaged: {f.name} is not valid JSON ({exc}); "
                          "delete the checkpoint to resume from an earlier one") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {path} is damaged: {f.name} is not a JSON object; "
                          "delete the checkpoint to resume from an earlier one")
    return state


def verify_checkpoint(path: str | Path) -> dict:
    """The checkpoint's state, after checking every file it was saved with is there, whole
    (sizes recorded at save time): a truncated or partly copied checkpoint fails here, with
    its name, before any process group starts."""
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
    return state


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under RUN_DIR/checkpoints whose save completed."""
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".partial")
            and is_checkpoint(p)]


def latest_checkpoint(root: Path) -> Path | None:
    """What `latest` names; if that is gone (a save killed while replacing a checkpoint of the
    same name), the complete checkpoint with the most steps."""
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if is_checkpoint(path):
            return path
    found = complete_checkpoints(root)
    return max(found, key=lambda p: read_state(p).get("step", -1)) if found else None


def resolve_checkpoint(ref: str | Path) -> Path:
    """A checkpoint directory as given; a run directory: its latest checkpoint; a Hugging Face
    directory: its converted checkpoint (converted once, then cached, see hf_cache)."""
    path = Path(ref)
    if is_checkpoint(path):
        return path
    if is_hf_dir(path):
        return ensure_converted(path)
    latest = latest_checkpoint(path / "checkpoints")
    if latest is not None:
        return latest
    raise ConfigError(f"'{path}' is neither a checkpoint nor a run directory with checkpoints; "
                      "pass RUN_DIR or RUN_DIR/checkpoints/NAME")


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
        base.append(f"model.padded_vocab_size={state['padded_vocab_size']}")
    return load_config(ckpt / "config.yaml", [*base, *overrides], purpose=purpose)
