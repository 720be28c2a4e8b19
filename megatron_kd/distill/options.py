"""The KD loss options, bound once: `KDOptions` is what the losses take (frozen, validated at
construction by the one rule set in config.validate). A training run builds it once from its
KDConfig; the only value that changes per step is the scheduled temperature (`at`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from megatron_kd.config.schema import KDConfig
from megatron_kd.config.validate import KD_KINDS, kd_option_problem

KINDS = KD_KINDS


@dataclass(frozen=True)
class KDOptions:
    kind: str = "forward_kl"
    temperature: float = 1.0
    t2_scale: bool = True
    top_k: int | None = None
    top_p: float | None = None
    other_bucket: bool = False
    jsd_beta: float = 0.5
    vocab_size: int | None = None  # true vocabulary; None = no padding columns

    def __post_init__(self):
        problem = kd_option_problem(self.kind, self.temperature, self.top_k, self.top_p,
                                    self.other_bucket, self.jsd_beta)
        if problem:
            raise ValueError(problem)

    @classmethod
    def from_config(cls, kd: KDConfig, vocab_size: int | None) -> "KDOptions":
        return cls(kind=kd.kind, temperature=kd.temperature, t2_scale=kd.t2_scale, top_k=kd.top_k,
                   top_p=kd.top_p, other_bucket=kd.other_bucket, jsd_beta=kd.jsd_beta,
                   vocab_size=vocab_size)

    def at(self, temperature: float) -> "KDOptions":
        """These options at a scheduled temperature (the same object when unchanged)."""
        if temperature == self.temperature:
            return self
        return dataclasses.replace(self, temperature=temperature)
