"""The frozen teacher beside the student.

`DistillationModel` holds the student GPTModel (as `.module`, so megatron-core's wrappers and
our checkpoint code see only the student: the teacher is outside the optimizer, the DDP
buffers and the student's checkpoints) and a frozen teacher GPTModel split over the same
pipeline stages; with virtual stages (`parallel.vpp`) there is one pair per chunk, the
teacher's chunk i holding its own i-th slice of layers. Between stages the teacher's hidden
states travel concatenated to the student's (`[s, b, h_student + h_teacher]`, `widened_p2p`);
the last stage returns both logits (sequence-major, `[s, b, V/TP]`), or with the fused output
layer both models' hidden states and output weights.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from megatron_kd.checkpoint.model_io import load_model_weights
from megatron_kd.config.schema import ModelConfig, RunConfig
from megatron_kd.errors import ConfigError
from megatron_kd.models.gpt import build_gpt_chunks, teacher_precision


class DistillationModel(torch.nn.Module):
    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, fused_output_layer: bool = False,
                 profiler=None):
        super().__init__()
        self.profiler = profiler  # a runtime.throughput.Profiler timing the teacher's forward, or None
        self.module = student  # named `module` so unwrapping reaches the student
        self.teacher = teacher
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student_hidden = student.config.hidden_size
        self.config = student.config
        self.fused_output_layer = fused_output_layer

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # always: no dropout, no training-mode behaviour in the teacher
        return self

    def set_input_tensor(self, input_tensor) -> None:
        """Pipeline stages > 0: split what the previous stage sent into the two models."""
        if isinstance(input_tensor, (list, tuple)):
            input_tensor = input_tensor[0]
        if input_tensor is None:
            self.module.set_input_tensor(None)
            self.teacher.set_input_tensor(None)
            return
        h = self.student_hidden  # contiguous: Transformer Engine's layers view their input flat
        self.module.set_input_tensor(input_tensor[..., :h].contiguous())
        self.teacher.set_input_tensor(input_tensor[..., h:].detach().contiguous())

    def forward(self, input_ids, position_ids, attention_mask, **kwargs):
        # fused: the last stage returns (final hidden states, output weight) of each model, not
        # logits; the loss makes the logits chunk by chunk (megatron_kd/distill/fused.py).
        # Unfused: sequence-major logits [s, b, V/TP] of each model.
        head = {"output_processor": _hidden_and_weight if self.fused_output_layer else sequence_major_logits}
        timed = self.profiler.section("teacher forward") if self.profiler else contextlib.nullcontext()
        with torch.no_grad(), timed:
            teacher_out = self.teacher(input_ids, position_ids, attention_mask, **head)
        student_out = self.module(input_ids, position_ids, attention_mask, **head)
        if self.module.post_process:
            return student_out, teacher_out
        return torch.cat([student_out, teacher_out.detach()], dim=-1)

    # Checkpoints hold the student only.
    def sharded_state_dict(self, *args, **kwargs):
        return self.module.sharded_state_dict(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self.module.load_state_dict(*args, **kwargs)


def _hidden_and_weight(*, hidden_states, output_layer, output_weight, **_):
    """megatron-core's output_processor hook: skip the output layer, hand back what it needs
    (final-norm hidden states `[s(/TP under SP), b, h]` and the vocab-parallel weight)."""
    return hidden_states, output_weight if output_weight is not None else output_layer.weight


def sequence_major_logits(*, hidden_states, output_layer, output_weight, runtime_gather_output,
                           scale_logits, **_):
    """megatron-core's output_processor hook: the logits `[s, b, V/TP]` as the output layer makes
    them. Without labels GPTModel returns them batch-major, a copy of the whole logits (and one
    more of their gradient in backward); the KD loss takes labels and mask transposed instead."""
    logits, _ = output_layer(hidden_states, weight=output_weight, runtime_gather_output=runtime_gather_output)
    return scale_logits(logits)


def widened_p2p(student_config, teacher_hidden: int):
    """(p2p communicator, process groups) for megatron-core's pipeline schedules, 1F1B and
    interleaved alike, whose messages between stages carry both models' hidden states
    (`[s, b, h_student + h_teacher]`): the schedules size their receive buffers from the
    student's hidden size, so the communicator widens every shape it is asked to receive."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
    from megatron.core.process_groups_config import ProcessGroupCollection

    student_hidden = student_config.hidden_size

    class WidenedP2P(P2PCommunicator):
        def _communicate(self, *, tensor_shape, **kwargs):
            if tensor_shape is not None:
                tensor_shape = (*tensor_shape[:-1], student_hidden + teacher_hidden)
            return super()._communicate(tensor_shape=tensor_shape, **kwargs)

    pp_group = parallel_state.get_pipeline_model_parallel_group()
    return WidenedP2P(pp_group=pp_group, config=student_config), ProcessGroupCollection.use_mpu_process_groups()


def build_teacher(cfg: RunConfig, teacher_model: ModelConfig, ckpt: Path) -> list:
    """The teacher's chunks for this rank (as many as the student's: the same pipeline and
    virtual stages), weights loaded from `ckpt` and verified."""
    teacher = build_gpt_chunks(teacher_model, cfg.parallel, teacher_precision(cfg))
    try:
        load_model_weights(teacher, ckpt, strict=True)
    except Exception as exc:  # dist_checkpointing raises many types for mismatches
        reason = " ".join(str(exc).split())[:400]
        raise ConfigError(f"teacher checkpoint {ckpt} does not load into the teacher model "
                          f"({teacher_model.name}): {reason}") from exc
    return teacher
