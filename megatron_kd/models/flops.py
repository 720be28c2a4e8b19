"""One compute currency: the FLOPs of a run (the student's training, the teacher's forward pass,
the teacher's own training), used by `mkd report`, `mkd plan`, `mkd info`, the logged TFLOP/s,
and (through `training_flops`/`forward_flops`/`tokens_for_budget`) by `mkd fit` and `mkd advise`.

The currency is 6·N·D for training and 2·N·D for a forward pass, where N is a model's *FLOP
parameters* (`flop_params`): the work per token in units of one weight's multiply-add.
  N = matmul weights                    (each layer's, of an MoE layer the ones a token uses:
                                         router, top-k experts, shared expert; norm weights are
                                         counted with them, as
                                         `count_parameters` does: 2·h per layer, < 0.5 % of it)
    + output layer, vocab x hidden      (tied or not: the logits are computed either way)
    + L · heads · head_dim · seq        (causal attention's QK^T and AV, averaged over positions)
The input embedding is a lookup, not a matmul: it is left out. So N is neither the total nor the
non-embedding parameter count; it depends on the sequence length through attention only.

For a table row with no FLOPs column and no model (only parameter counts), `row_flop_params` falls
back to the row's total parameters: it counts the output layer (as N does) and the input
embedding (which N does not) and leaves out attention (small where seq << 6·hidden).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_kd.config.schema import ModelConfig
from megatron_kd.models.params import count_parameters

TRAINING_FLOPS_PER_PARAM = 6.0  # forward 2 (multiply + add) + backward 4 (input and weight gradients)
FORWARD_FLOPS_PER_PARAM = 2.0


def attention_flop_params(m: ModelConfig, seq_length: int) -> float:
    """Causal attention's work per token in weight units: QK^T and AV each cost 2·head_dim FLOPs
    per (query, key) pair and head, over seq/2 keys on average: 2·2·L·H·hd·s/2 forward = 2·(L·H·hd·s)."""
    head_dim = m.kv_channels or m.hidden_size // m.num_attention_heads
    return float(m.num_layers * m.num_attention_heads * head_dim * seq_length)


def flop_params(m: ModelConfig, seq_length: int) -> float:
    """N of the currency (module docstring): matmul weights + output layer + attention at `seq_length`."""
    c = count_parameters(m)
    output_layer = c.embedding  # vocab x hidden, whether or not it shares the embedding's weights
    return float(c.layers_active + output_layer) + attention_flop_params(m, seq_length)


def training_flops(n_flop_params: float, tokens: float) -> float:
    """FLOPs of training a model of N FLOP parameters on D tokens: 6·N·D. The function the law and
    `mkd advise` use for the student's training and a teacher's pretraining; N is `flop_params`
    (a run's N: `row_flop_params`), not the non-embedding count."""
    return TRAINING_FLOPS_PER_PARAM * n_flop_params * tokens


def forward_flops(n_flop_params: float, tokens: float) -> float:
    """FLOPs of a forward pass of a model of N FLOP parameters over D tokens: 2·N·D (a teacher's
    pass over the student's tokens; 1/3 of `training_flops`)."""
    return FORWARD_FLOPS_PER_PARAM * n_flop_params * tokens


def tokens_for_budget(budget: float, student: float, teacher: float = 0.0) -> float:
    """The student's tokens D that a budget buys: training_flops(N_S, D) + forward_flops(N_T, D) =
    budget, so D = budget / (6·N_S + 2·N_T) (teacher 0: no teacher pass). N in FLOP parameters."""
    return budget / (TRAINING_FLOPS_PER_PARAM * student + FORWARD_FLOPS_PER_PARAM * teacher)


def training_flops_per_token(m: ModelConfig, seq_length: int) -> float:
    """Forward + backward FLOPs per token of model `m` at `seq_length`."""
    return training_flops(flop_params(m, seq_length), 1)


def step_flops_per_token(student: ModelConfig, seq_length: int, teacher: ModelConfig | None = None) -> float:
    """The work of one KD training token: the student's training plus the teacher's forward pass
    (None: no teacher model, e.g. read from a cache or the unigram). What the TFLOP/s counts."""
    flops = training_flops_per_token(student, seq_length)
    if teacher is not None:
        flops += forward_flops(flop_params(teacher, seq_length), 1)
    return flops


@dataclass(frozen=True)
class RunFlops:
    """A run's FLOPs by part (the teacher's parts 0 without a teacher model)."""

    student: float  # the student's training over its tokens
    teacher_pass: float  # the teacher's forward over the student's tokens, as if for this run alone
    teacher_pretrain: float  # the teacher's own training over its tokens (0 when unknown)


def run_flops(student: ModelConfig, seq_length: int, tokens: float, teacher: ModelConfig | None = None,
              teacher_tokens: float = 0) -> RunFlops:
    """A run's FLOPs from its model configs. The teacher's pretraining is counted at the run's
    `seq_length` (the teachers here are trained at their students' length)."""
    student_flops = training_flops(flop_params(student, seq_length), tokens)
    if teacher is None:
        return RunFlops(student_flops, 0.0, 0.0)
    n_teacher = flop_params(teacher, seq_length)
    return RunFlops(student_flops, forward_flops(n_teacher, tokens), training_flops(n_teacher, teacher_tokens or 0))


def row_flop_params(row: dict, who: str = "student") -> tuple[float | None, bool]:
    """(N of `who`, "student" or "teacher", in FLOP parameters; whether it is the fallback) for a
    report or table row: from its FLOPs column and tokens (exact: the column was computed from the
    model's config), else its total parameters (`{who}_params`, the documented fallback), else None."""
    tokens = row.get("student_tokens")
    column, per_param = (("student_flops", TRAINING_FLOPS_PER_PARAM) if who == "student"
                         else ("teacher_pass_flops", FORWARD_FLOPS_PER_PARAM))
    if row.get(column) is not None and tokens:
        return float(row[column]) / (per_param * float(tokens)), False
    if row.get(f"{who}_params") is not None:
        return float(row[f"{who}_params"]), True
    return None, False
