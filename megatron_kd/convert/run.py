"""Conversion drivers (one process, TP=1, EP=1: the dist checkpoint written loads at any TP/PP/EP)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
import yaml

from megatron_kd.checkpoint.checkpointer import (
    check_new_checkpoint_dir,
    checkpoint_record,
    sharded_state,
    write_checkpoint,
)
from megatron_kd.checkpoint.model_io import load_model_weights
from megatron_kd.checkpoint.refs import resolve_checkpoint, saved_config, verify_checkpoint
from megatron_kd.config.schema import DataConfig, ParallelConfig, PrecisionConfig, RunConfig
from megatron_kd.convert.hf import (
    SafetensorsReader,
    check_links,
    copy_tokenizer_files,
    iter_hf_tensors,
    load_hf_weights,
)
from megatron_kd.convert.hf_tokenizer import export_tokenizer
from megatron_kd.data.tokenizer import Tokenizer
from megatron_kd.files import staged_directory
from megatron_kd.models.gpt import build_gpt_model, build_transformer_config
from megatron_kd.models.hf_config import HF_DTYPES, hf_to_model_config, model_config_to_hf, read_hf_config
from megatron_kd.runtime.distributed import init_distributed


def _ensure_process_group(seed: int = 0) -> None:
    if not torch.distributed.is_initialized():
        init_distributed(ParallelConfig(), seed)


def hf_to_mcore(hf_dir: Path, out_dir: Path, dtype: str | None = None) -> Path:
    """Convert a HF Llama/Qwen3/Qwen3-MoE/Mixtral directory into a megatron_kd checkpoint directory."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    hf_cfg = read_hf_config(hf_dir)
    model_cfg = hf_to_model_config(hf_cfg, hf_dir.name)
    dtype = dtype or HF_DTYPES.get(str(hf_cfg.get("torch_dtype") or hf_cfg.get("dtype")), "fp32")
    check_new_checkpoint_dir(out_dir, "output directory")
    check_links(hf_dir)  # before anything is read or written
    reader = SafetensorsReader(hf_dir)
    _ensure_process_group()
    precision = PrecisionConfig(dtype=dtype)
    # every weight is overwritten from the safetensors: megatron-core's random draw (minutes on
    # the CPU for a 30B model) is skipped
    config = build_transformer_config(model_cfg, ParallelConfig(), precision, perform_initialization=False)
    model = build_gpt_model(model_cfg, ParallelConfig(), precision, pre_process=True, post_process=True,
                            config=config)
    print(f"converting {hf_dir} ({hf_cfg['architectures'][0]}, {model_cfg.num_layers} layers) ...",
          file=sys.stderr)
    load_hf_weights(model, reader, model_cfg)
    tok_name = next((n for n in ("tokenizer.json", "tokenizer.model") if (hf_dir / n).is_file()), None)
    run = RunConfig(model=model_cfg, precision=precision,
                    data=DataConfig(tokenizer=str(out_dir / tok_name) if tok_name else None))
    run.run.name, run.run.dir = f"converted-{hf_dir.name}", str(out_dir)

    def write_files(stage: Path) -> dict:
        """The converted checkpoint's files, written into `stage` (renamed to `out_dir` after)."""
        from megatron.core import dist_checkpointing

        dist_checkpointing.save(sharded_state(model), str(stage))
        copied = copy_tokenizer_files(hf_dir, stage)
        (stage / "model.yaml").write_text(
            "# Model recipe of a converted Hugging Face checkpoint (usable as teacher.model)\n"
            + yaml.safe_dump({"model": dataclasses.asdict(model_cfg)}, sort_keys=False))
        tok = Tokenizer(stage / tok_name).describe() if tok_name else None
        return {"tokenizer": tok, "tokenizer_files": copied}

    write_checkpoint(out_dir, run, checkpoint_record(run, "converted", source=str(hf_dir.resolve())), write_files)
    return out_dir


def mcore_to_hf(checkpoint: Path, out_dir: Path, shard_bytes: int = 2 << 30) -> Path:
    """Write a megatron_kd checkpoint as a HF directory (sharded safetensors + index)."""
    ckpt = resolve_checkpoint(checkpoint)
    state = verify_checkpoint(ckpt)
    # one process: the experts of a run trained at EP > 1 (or its teacher's) come back whole
    cfg = saved_config(ckpt, ["parallel.tp=1", "parallel.pp=1", "parallel.vpp=1", "parallel.ep=1",
                              "parallel.etp=null", "teacher.checkpoint=null"], purpose="model", state=state)
    out_dir = Path(out_dir)
    check_new_checkpoint_dir(out_dir, "output directory")
    _ensure_process_group()
    model = build_gpt_model(cfg.model, cfg.parallel, cfg.precision, pre_process=True, post_process=True)
    load_model_weights(model, ckpt)
    with staged_directory(out_dir) as stage:
        _write_hf(model, cfg, ckpt, stage, shard_bytes)
    return out_dir


def _write_hf(model, cfg, ckpt: Path, stage: Path, shard_bytes: int) -> None:
    """The HF directory's files (sharded safetensors, index, config, tokenizer) in `stage`."""
    from safetensors.torch import save_file  # safetensors: only the exporter needs it

    # One shard at a time in memory: written and dropped when it reaches shard_bytes.
    n_shards, total_bytes, current, size, weight_map = 0, 0, {}, 0, {}

    def flush():
        nonlocal current, size, n_shards, total_bytes
        if current:
            n_shards += 1
            name = f"model-{n_shards:05d}.safetensors"
            save_file(current, str(stage / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in current})
            total_bytes += size
            current, size = {}, 0

    for name, tensor in iter_hf_tensors(model, cfg.model):
        t = tensor.detach().contiguous().clone()
        if size + t.numel() * t.element_size() > shard_bytes:
            flush()
        current[name] = t
        size += t.numel() * t.element_size()
    flush()
    total = n_shards
    final_map = {}
    for i in range(1, total + 1):  # name shards "-of-N" once N is known
        old, new = stage / f"model-{i:05d}.safetensors", f"model-{i:05d}-of-{total:05d}.safetensors"
        old.rename(stage / new)
        final_map.update({k: new for k, v in weight_map.items() if v == old.name})
    (stage / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total_bytes},
         "weight_map": dict(sorted(final_map.items()))}, indent=2))
    (stage / "config.json").write_text(json.dumps(model_config_to_hf(cfg.model, cfg.precision.dtype), indent=2))
    # tokenizer.json and the BOS/EOS settings too, so AutoTokenizer encodes as the run did
    export_tokenizer(ckpt, stage, cfg.data.tokenizer, cfg.data.eod_token, cfg.model.max_position_embeddings)
