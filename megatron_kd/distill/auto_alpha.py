"""kd.auto: per-token KD weights from the teacher's advantage on the label, instead of one α.

On each token t the teacher's advantage is a_t = log p_T(y_t) - log p_S(y_t) (both at T = 1,
megatron-core's CE convention: softmax over every column), which the objectives already have (the
one-pass kernel reads both models' label logits; a cache stores the teacher's `label_logp`). The
token's KD weight is

    α_t = α_max · σ(a_t / τ)

with α_max = kd.alpha (the ceiling) and τ = kd.auto.tau (nats): where the teacher predicts the
data better than the student, KD gets up to α_max, where it predicts it worse, KD fades out, and
a teacher worse than the student everywhere switches KD off by itself. α_t is a constant of the
step (no gradient flows through it): the objective is Σ_t mask_t·((1 - α_t)·CE_t + α_t·T²·KD_t)
(kd.mix=convex; keep_ce / keep_kd weight the terms as a fixed α does).

Reported per step (token means): `kd/alpha_effective` (mean α_t), `kd/auto_share` (share of tokens
with α_t > α_max / 2, i.e. with a_t > 0: the teacher is the better predictor of the label) and
`kd/teacher_advantage` (mean a_t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The row kernels' extra masked sums under kd.auto (after their own): the weighted objective
# itself (its per-token weights are not one number a total could be formed from), Σ α_t, the
# tokens the teacher leads on, Σ a_t.
AUTO_STATS = ("weighted", "alpha", "share", "advantage")


@dataclass(frozen=True)
class AutoAlpha:
    """The per-token weighting of one step: ceiling `alpha_max` (the step's kd.alpha), softness
    `tau` (nats of advantage from α_max/2 to ~0.73·α_max) and the mixing convention."""

    alpha_max: float
    tau: float
    mix: str = "convex"

    def alpha(self, advantage: torch.Tensor) -> torch.Tensor:
        """α_t (float64) of advantages a_t."""
        return self.alpha_max * torch.sigmoid(advantage.double() / self.tau)

    def weights(self, student_ce: torch.Tensor, teacher_ce: torch.Tensor):
        """(advantage, α_t, CE weight, KD weight) per row, float64, from each model's cross
        entropy to the label (-log p(y))."""
        advantage = student_ce.double() - teacher_ce.double()
        alpha = self.alpha(advantage)
        if self.mix == "keep_ce":
            return advantage, alpha, torch.ones_like(alpha), alpha
        if self.mix == "keep_kd":
            return advantage, alpha, 1.0 - alpha, torch.ones_like(alpha)
        if self.mix == "convex":
            return advantage, alpha, 1.0 - alpha, alpha
        raise ValueError(f"kd.auto weights tokens for kd.mix convex, keep_ce or keep_kd, not {self.mix!r}")

    def add_stats(self, stats: torch.Tensor, ce, kd, w, advantage, alpha, ce_w, kd_w) -> None:
        """Adds the rows' masked AUTO_STATS sums (the last four entries of `stats`). `kd` is
        already 0 on masked rows (they may hold any value there)."""
        wd = w.double()
        weighted = (ce_w * ce.double() + kd_w * kd.double()) * wd
        share = (alpha > 0.5 * self.alpha_max).double() * wd
        stats[-4:] += torch.stack([weighted.sum(), (alpha * wd).sum(), share.sum(), (advantage * wd).sum()])


def auto_sums(stats: dict) -> tuple:
    """(Σ α_t, Σ [a_t > 0], Σ a_t) from a kernel's named sums, for LossSums.auto."""
    return stats["alpha"], stats["share"], stats["advantage"]
