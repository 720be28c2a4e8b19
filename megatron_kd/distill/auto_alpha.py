"""kd.auto: the KD weight set from the run itself, from the teacher's advantage on the labels.

On each token t the teacher's advantage is a_t = log p_T(y_t) - log p_S(y_t) (both at T = 1,
megatron-core's CE convention: softmax over every column), which the objectives already have (the
one-pass kernel reads both models' label logits; a cache stores the teacher's `label_logp`). The
run keeps a running mean ā of it over the micro-batches seen (`AdvantageTrend`, an exponential
mean; each micro-batch's sums added over the data-parallel ranks first, so every rank holds the
same ā and uses the same α), and each micro-batch's α is

    α = α_max · max(0, tanh(ā / τ))

with α_max = kd.alpha (the ceiling) and τ = kd.auto.tau (nats): while the teacher predicts the
data clearly better than the student, KD gets up to α_max; as the student closes the gap, KD fades
out, and once the student predicts the data as well as the teacher, or better, KD is off. α is a
constant of the micro-batch (no gradient flows through it), so the objective stays
(1 - α)·CE + α·T²·KD, a proper mix: weights set per token from the label (α_t a function of
a_t) reweight the CE by a function of y, which biases the student's distribution (measured:
worse than α = 0 and than a fixed α on the study's teachers).

Reported per step (token means): `kd/alpha_effective` (the α used), `kd/auto_share` (share of
tokens on which the teacher leads, a_t > 0) and `kd/teacher_advantage` (mean a_t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_kd.distill.vocab_parallel import all_reduce

# The row kernels' extra masked sums under kd.auto (after their own): the weighted objective,
# Σ α, the tokens the teacher leads on, Σ a_t.
AUTO_STATS = ("weighted", "alpha", "share", "advantage")
TREND_DECAY = 0.9  # per micro-batch: ~10 micro-batches of memory, a few steps


@dataclass(frozen=True)
class AutoAlpha:
    """One micro-batch's weighting: its α (`level`, from the run's AdvantageTrend), the ceiling
    `alpha_max` and the mixing convention; the kernels read the advantage per token for the
    reports and the trend."""

    alpha_max: float
    level: float
    mix: str = "convex"

    def weights(self, student_ce: torch.Tensor, teacher_ce: torch.Tensor):
        """(advantage, α, CE weight, KD weight) per row, float64, from each model's cross entropy
        to the label (-log p(y))."""
        advantage = student_ce.double() - teacher_ce.double()
        alpha = torch.full_like(advantage, self.level)
        if self.mix == "keep_ce":
            return advantage, alpha, torch.ones_like(alpha), alpha
        if self.mix == "keep_kd":
            return advantage, alpha, 1.0 - alpha, torch.ones_like(alpha)
        if self.mix == "convex":
            return advantage, alpha, 1.0 - alpha, alpha
        raise ValueError(f"kd.auto weights KD for kd.mix convex, keep_ce or keep_kd, not {self.mix!r}")

    def add_stats(self, stats: torch.Tensor, ce, kd, w, advantage, alpha, ce_w, kd_w) -> None:
        """Adds the rows' masked AUTO_STATS sums (the last four entries of `stats`). `kd` is
        already 0 on masked rows (they may hold any value there)."""
        wd = w.double()
        weighted = (ce_w * ce.double() + kd_w * kd.double()) * wd
        share = (advantage > 0).double() * wd
        stats[-4:] += torch.stack([weighted.sum(), (alpha * wd).sum(), share.sum(), (advantage * wd).sum()])


@dataclass
class AdvantageTrend:
    """The run's running mean of the teacher's advantage (nats per token), over micro-batches;
    None before the first. Kept by the run's KD objective and saved with its checkpoints
    (`state_dict`), so a resumed run goes on with the same α."""

    mean: float | None = None

    def level(self, alpha_max: float, tau: float) -> float:
        """The next micro-batch's α: α_max until a first advantage is known."""
        if self.mean is None:
            return alpha_max
        return alpha_max * max(0.0, math.tanh(self.mean / tau))

    def update(self, advantage_sum: torch.Tensor, count: torch.Tensor, group=None) -> None:
        """One micro-batch's masked Σ a_t over its token count, summed over `group` first (the
        data-parallel ranks, each holding other tokens of the micro-batch: every rank then takes
        the same step, the one a single process would take on the whole micro-batch). Tensor-
        parallel ranks already hold equal sums (megatron-core's CE convention); under pipeline
        parallelism only the last stage, which computes the loss, keeps the trend."""
        pair = torch.stack([advantage_sum.detach().double(), count.detach().double()])
        all_reduce(pair, dist.ReduceOp.SUM, group)
        total, n = pair.tolist()
        if n <= 0:
            return
        value = total / n
        self.mean = value if self.mean is None else TREND_DECAY * self.mean + (1 - TREND_DECAY) * value

    def state_dict(self) -> dict:
        """Plain JSON values (a Python float survives a JSON round trip exactly)."""
        return {"mean": self.mean}

    def load_state_dict(self, state: dict) -> None:
        mean = state.get("mean") if isinstance(state, dict) and set(state) == {"mean"} else math.nan
        if mean is not None and (isinstance(mean, bool) or not isinstance(mean, (int, float))
                                 or not math.isfinite(mean)):
            raise ValueError(f"kd.auto's saved advantage trend must be {{'mean': a finite number or null}}, "
                             f"got {state!r}: the checkpoint is damaged; resume from another one")
        self.mean = None if mean is None else float(mean)


def auto_sums(stats: dict) -> tuple:
    """(Σ α, Σ [a_t > 0], Σ a_t) from a kernel's named sums, for LossSums.auto."""
    return stats["alpha"], stats["share"], stats["advantage"]
