"""Megatron-LM training on from a student exported by `mkd convert mcore-to-megatron-lm`: its own
setup_model_and_optimizer (model built, wrapped in DDP, optimizer and LR schedule made, the export
loaded by load_checkpoint with --no-load-optim --no-load-rng) and one train_step
(tests/checkpoint/test_megatron_lm.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.workers.megatron_lm import ARCH, _megatron_lm_args, _model, megatron_lm_argv

SEQ, MICRO_BATCHES = 32, 8  # megatron_lm_argv: --seq-length 32, a global batch of 8 micro-batches of 1


def _forward_step(data_iterator, model):
    """pretrain_gpt.py's contract (that script is not in the distribution): the micro-batch's
    per-token losses, summed, with their count, and the same pair reported as "lm loss"."""
    sequence = next(data_iterator)
    per_token = model(sequence[:, :-1], torch.arange(SEQ).unsqueeze(0), None, labels=sequence[:, 1:])

    def loss_func(losses):
        total, count = losses.float().sum(), torch.tensor(losses.numel(), dtype=torch.int)
        return total, count, {"lm loss": torch.stack([total.detach(), count.float()])}
    return per_token, loss_func


def _mean_loss(model, batches) -> float:
    with torch.no_grad():
        total = sum(model(b[:, :-1], torch.arange(SEQ).unsqueeze(0), None, labels=b[:, 1:]).sum() for b in batches)
    return total.item() / (len(batches) * SEQ)


def train_on_from_export(workdir: str, exported: dict) -> dict:
    """For each exported Megatron-LM directory: the iteration Megatron-LM resumes at, its first
    train_step's loss beside the exported weights' own loss on the same batches (read by
    megatron_kd's reader), whether the update was skipped, and how many parameters it moved."""
    from megatron.core.enums import ModelType
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import get_model_config

    from megatron_kd.checkpoint.megatron_lm import iteration_dir
    from megatron_kd.config.schema import ParallelConfig
    from megatron_kd.convert.megatron_lm import load_megatron_lm_weights
    from megatron_kd.runtime.distributed import init_distributed, shutdown

    init_distributed(ParallelConfig(), 0)
    g = torch.Generator().manual_seed(11)
    batches = [torch.randint(0, ARCH["vocab_size"], (1, SEQ + 1), generator=g) for _ in range(MICRO_BATCHES)]
    out = {}
    for kind, directory in exported.items():
        moe = kind == "moe"
        reference = _model(1, moe)
        load_megatron_lm_weights(reference, iteration_dir(directory))
        args = _megatron_lm_args(megatron_lm_argv(1, moe, str(Path(workdir) / f"saves-{kind}")) + [
            "--load", directory, "--no-load-optim", "--no-load-rng"], global_variables=True)
        from megatron.training import training  # lazy: after _megatron_lm_args made it importable

        model, optimizer, scheduler = training.setup_model_and_optimizer(
            ModelType.encoder_or_decoder, lambda pre_process=True, post_process=True, **_: _model(1, moe))
        before = [p.detach().clone() for p in model[0].parameters()]
        losses, skipped, *_ = training.train_step(_forward_step, iter(batches), model, optimizer, scheduler,
                                                  get_model_config(model[0]), get_forward_backward_func(),
                                                  iteration=args.iteration)
        out[kind] = {"iteration": args.iteration, "loss": losses["lm loss"].item(), "skipped": skipped,
                     "exported_loss": _mean_loss(reference, batches),
                     "moved": sum(not torch.equal(a, p) for a, p in zip(before, model[0].parameters())),
                     "parameters": len(before)}
    shutdown()
    return out
