"""An MoE run's checkpoint across layouts, on two gloo ranks in one process group: a training
run stopped and saved at one layout is resumed at others (the model and optimizer resharded
over TP, PP, EP and expert TP), each in its own copy of the run directory. Every run is what
`mkd train` runs on each rank (run_training); only the process groups are rebuilt in between."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

MOE = ["model.moe.num_experts=4", "model.moe.ffn_hidden_size=128", "model.moe.aux_loss_coeff=0.01",
       "model.moe.z_loss_coeff=0.001"]
RUN = ["train.steps=4", "train.lr=3e-3", "logging.tensorboard=false", "checkpoint.save_at_end=false"]


def _layout(parallel) -> None:
    """Megatron-core's groups for `parallel` in the running process group, RNGs seeded as at start."""
    import torch
    from megatron.core import parallel_state

    from megatron_kd.runtime.distributed import init_distributed, seed_everything

    if not torch.distributed.is_initialized():
        init_distributed(parallel, 0)
        return
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp,
        expert_model_parallel_size=parallel.ep, expert_tensor_parallel_size=parallel.etp or parallel.tp)
    seed_everything(0)


def _train(run_dir: Path, overrides: list[str]) -> list[dict]:
    """One run of `mkd train train/tiny-mock` with the MoE student; its metrics.jsonl rows."""
    from megatron_kd.checkpoint.checkpointer import Checkpointer
    from megatron_kd.config import load_config
    from megatron_kd.training.loop import run_training

    cfg = load_config("train/tiny-mock", [*RUN, *MOE, f"run.dir={run_dir}", *overrides])
    _layout(cfg.parallel)
    run_training(cfg, Checkpointer(cfg))
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def resume_at_layouts(workdir: str, saved_at: list[str], layouts: dict[str, list[str]]) -> dict:
    """The uninterrupted run (one expert-parallel rank, two data-parallel ones), the run stopped
    after step 2 at `saved_at`, and that checkpoint resumed at each of `layouts` to step 4:
    every run's rows by name, and the parallel sizes each ran at."""
    import torch
    from megatron.core import parallel_state as ps

    from megatron_kd.runtime.distributed import shutdown

    work = Path(workdir)
    start = time.perf_counter()
    out = {"reference": _train(work / "reference", [])}
    out["saved"] = _train(work / "saved", [*saved_at, "train.stop_at_step=2"])
    sizes, seconds = {}, {"reference and saved": time.perf_counter() - start}
    for name, overrides in layouts.items():
        start = time.perf_counter()
        if torch.distributed.get_rank() == 0:
            shutil.copytree(work / "saved", work / name)
        torch.distributed.barrier()
        out[name] = _train(work / name, overrides)
        sizes[name] = [ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size(),
                       ps.get_expert_model_parallel_world_size(), ps.get_expert_tensor_parallel_world_size()]
        seconds[name] = time.perf_counter() - start
    out["sizes"], out["seconds"] = sizes, seconds
    shutdown()
    return out
