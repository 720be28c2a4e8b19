"""Every route that computes a KD loss, fed the same inputs, against one float64 reference.

The routes: the online objective at T = 1 (one exp per model) and at other temperatures, its
truncated / reverse / JSD / hard kinds, `kd_loss` alone (the KD term of the separate passes), the
separate passes themselves (α = 0, magnitude_matched), the fused output layer, the top-K cache
(the other bucket stored in fp32 and bf16, renormalised, k' < K), the sampled cache, the full
cache and the top-K cache through rebuilt teacher logits, and the unigram teacher (its one top-k
row, and its dense row); kd.auto's per-micro-batch α on the one-pass, general, fused and cache
routes. Inputs: vocabulary padding (59 real of 64 columns), masked tokens, tied
teacher logits, huge logits.

Tensor-parallel convention (megatron-core's vocab_parallel_cross_entropy): every rank returns the
same loss, and its backward gives exactly that loss's gradient w.r.t. the rank's own vocabulary
shard. TP=1 runs in this process (fast tier); TP=1 and TP=2 together run in one 2-rank gloo spawn,
with the routes that need megatron-core (its cross entropy, its tensor-parallel regions).
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_kd.config.schema import AutoAlphaConfig, KDConfig
from megatron_kd.distill.auto_alpha import AutoAlpha
from megatron_kd.distill.cache import teacher_rows
from megatron_kd.distill.cache_encoding import Encoding
from megatron_kd.distill.fused import fused_output_kd
from megatron_kd.distill.losses import kd_loss
from megatron_kd.distill.objective import (
    CachedRows,
    FusedOutput,
    KDObjective,
    OnlineLogits,
    UnigramTeacher,
    make_loss_func,
)
from megatron_kd.distill.options import KDOptions
from tests.distributed import run_distributed

V, VPAD, S, B = 59, 64, 4, 3  # 5 padding columns; 32 per rank at TP=2 (the second has 27 real)
K_CACHE, DRAWS = 8, 12
INPUTS = ("random", "ties", "huge")


def make_inputs(case: str):
    """Student and teacher logits `[S, B, VPAD]` (fp32 values), labels and a 0/1 mask `[S, B]`,
    the same on every rank."""
    g = torch.Generator().manual_seed(zlib.crc32(case.encode()))
    zs = torch.randn(S, B, VPAD, generator=g, dtype=torch.float64) * 3
    zt = torch.randn(S, B, VPAD, generator=g, dtype=torch.float64) * 3
    if case == "ties":  # small integers: tied maxima and ties at the top-k / top-p boundary
        zt = torch.randint(-2, 3, (S, B, VPAD), generator=g).double()
    if case == "huge":
        zs[0, 0, :V] += 800.0  # a shifted row (the softmax is shift-invariant)
        zs[1, :, 7] = 3000.0  # a student certain of one token
        zt[2, :, :V] *= 400.0  # a teacher all but one-hot
        zs[3, :, V:] = 900.0  # padding columns far above the real ones (they count in the CE only)
    labels = torch.randint(0, V, (S, B), generator=g)
    mask = (torch.rand(S, B, generator=g) > 0.3).float()
    mask[0, 0] = 0.0
    return zs.float(), zt.float(), labels, mask


# --- the reference: float64, the whole vocabulary, autograd on the plain formulas -------------

def truncated_target(c: torch.Tensor, top_k=None, top_p=None, other_bucket=False):
    """(kept columns, teacher probabilities there, the teacher's mass outside them or 0) from
    teacher logits `c` [n, V]: top-k ties to the lowest id, top-p keeps every tie at its threshold."""
    pt = torch.softmax(c, -1)
    keep = torch.ones_like(pt, dtype=torch.bool)
    if top_k:
        order = torch.sort(c, dim=-1, descending=True, stable=True).indices
        keep = torch.zeros_like(keep).scatter_(-1, order[:, :top_k], True)
    elif top_p:
        sp = torch.sort(pt, dim=-1, descending=True).values
        first = (sp.cumsum(-1) >= top_p * (1 - 1e-7)).double().argmax(-1)
        keep = pt >= sp.gather(-1, first[:, None])
    q = torch.where(keep, pt, torch.zeros_like(pt))
    q_o = torch.where(keep, torch.zeros_like(pt), pt).sum(-1) if other_bucket else torch.zeros(c.shape[0])
    return keep, q, q_o.double()


def rows_target(rows: dict, top_k: int, other_bucket: bool):
    """The same triple from a top-K or sampled cache's rows `[B, S, K]` (as decoded), in token
    order `[S * B]`: the first `top_k` ids are kept, the cached ones past them join the other mass."""
    ids = rows["ids"].transpose(0, 1).reshape(S * B, -1).long()
    q_k = rows["logp"].transpose(0, 1).reshape(S * B, -1).double().exp()
    q_o = rows["other_logp"].transpose(0, 1).reshape(-1).double().exp() + q_k[:, top_k:].sum(-1)
    keep = torch.zeros(S * B, V, dtype=torch.bool).scatter_(-1, ids[:, :top_k], True)
    q = torch.zeros(S * B, V, dtype=torch.float64).scatter_(-1, ids[:, :top_k], q_k[:, :top_k])
    return keep, q, q_o if other_bucket else torch.zeros_like(q_o)


def kd_per_token(a: torch.Tensor, kind: str, teacher, jsd_beta: float = 0.5) -> torch.Tensor:
    """KD per token from the student's tempered real logits `a` [n, V]. forward_kl: `teacher` is
    (kept, q, q_o), the target q on the kept columns and one "other" class of mass q_o, taken as
    a distribution (divided by its sum); else the teacher's tempered real logits [n, V]."""
    logp = F.log_softmax(a, -1)
    p = logp.exp()
    if kind == "forward_kl":
        keep, q, q_o = teacher
        mass = q.sum(-1) + q_o
        r, r_o = q / mass[:, None], q_o / mass
        s_o = torch.where(keep, torch.zeros_like(p), p).sum(-1)
        s_o = torch.where(r_o > 0, s_o, torch.ones_like(s_o))  # no log 0 where the class is empty
        kept = torch.where(r > 0, r * (r.clamp(min=1e-300).log() - logp), torch.zeros_like(p)).sum(-1)
        return kept + torch.where(r_o > 0, r_o * (r_o.clamp(min=1e-300).log() - s_o.log()), torch.zeros_like(r_o))
    lt = F.log_softmax(teacher, -1)
    if kind == "reverse_kl":
        return (p * (logp - lt)).sum(-1)
    if kind == "jsd":
        pt = lt.exp()
        m = jsd_beta * pt + (1 - jsd_beta) * p
        return jsd_beta * (pt * (lt - m.log())).sum(-1) + (1 - jsd_beta) * (p * (logp - m.log())).sum(-1)
    target = torch.sort(teacher, dim=-1, descending=True, stable=True).indices[:, 0]  # hard: lowest id
    return -logp.gather(-1, target[:, None]).squeeze(-1)


def reference(zs, labels, mask, kind, teacher, *, T=1.0, t2_scale=True, ce_w=0.5, kd_w=0.5, jsd_beta=0.5,
              magnitude_matched=False, auto=None) -> dict:
    """ce_w·Σ mask·CE + kd_w·Σ mask·T²·KD and its gradient w.r.t. the student's logits [S, B, VPAD].
    CE is megatron-core's (softmax over every column, padding included), KD over the real ones.
    `teacher` as kd_per_token's, on tempered logits; magnitude_matched: the KD weight kd_w·CE/KD;
    `auto` = (α, keep_ce, the teacher's label log-probabilities [S*B]): kd.auto's α (a constant)
    with the reports it adds: Σ mask·α and the teacher's advantage Σ mask·(log p_T(y) - log p_S(y))."""
    z = zs.double().reshape(-1, VPAD).requires_grad_(True)
    m = mask.reshape(-1).double() > 0
    zero = torch.zeros(z.shape[0], dtype=torch.float64)
    ce = torch.where(m, -F.log_softmax(z, -1).gather(-1, labels.reshape(-1, 1)).squeeze(-1), zero)
    kd = torch.where(m, kd_per_token(z[:, :V] / T, kind, teacher, jsd_beta), zero) * (T * T if t2_scale else 1.0)
    ce_sum, kd_sum = ce.sum(), kd.sum()
    weight = kd_w * (ce_sum / kd_sum).detach() if magnitude_matched else kd_w
    out = {}
    if auto is None:
        total = ce_w * ce_sum + weight * kd_sum
    else:
        alpha, keep_ce, teacher_label = auto
        student_label = F.log_softmax(z.detach(), -1).gather(-1, labels.reshape(-1, 1)).squeeze(-1)
        total = ((1.0 if keep_ce else 1.0 - alpha) * ce_sum + alpha * kd_sum)
        out["alpha"] = alpha * m.double().sum()
        out["advantage"] = torch.where(m, teacher_label.double() - student_label, zero).sum()
    total.backward()
    return out | {"total": total.detach(), "ce": ce_sum.detach(), "kd": kd_sum.detach(), "kd_tok": kd.detach(),
                  "grad": z.grad.reshape(S, B, VPAD)}


# --- the routes ---------------------------------------------------------------------------------

def _objective(**kd):
    if "auto" in kd:
        kd = kd | {"auto": AutoAlphaConfig(enabled=True, **kd["auto"])}
    return KDObjective.from_config(KDConfig(**kd), V)


def _through_loss_func(kd: dict, student, labels, mask, signal, group) -> dict:
    """make_loss_func (the training step's one entrance) on this rank's student logits."""

    obj = _objective(**kd)
    x = student.clone().requires_grad_(True)
    total, _, reports = make_loss_func(obj, kd.get("alpha", 0.5), kd.get("temperature", 1.0), labels, mask,
                                       signal, group)(x * 1.0)
    (2.0 * total).backward()  # the incoming gradient scales the saved one
    out = {"total": total, "ce": reports["lm loss"][0], "kd": reports["kd loss"][0], "grad": x.grad / 2}
    if "auto" in kd:
        out["alpha"] = reports["kd/alpha_effective"][0]
        out["advantage"] = reports["kd/teacher_advantage"][0]
    return out


class Case:
    """One rank's view of one input case: its shard of both models' logits, and the teacher's
    signal in each form a route reads (cache rows are built from the shards, as the cache job does)."""

    def __init__(self, name: str, group, rank: int, tp: int):
        self.zs, self.zt, self.labels, self.mask = make_inputs(name)
        self.group, self.width = group, VPAD // tp
        self.cols = slice(rank * self.width, (rank + 1) * self.width)
        self.zs_local, self.zt_local = self.zs[..., self.cols].contiguous(), self.zt[..., self.cols].contiguous()

    def teacher_logits(self, T=1.0) -> torch.Tensor:
        return self.zt.double().reshape(-1, VPAD)[:, :V] / T

    def rows(self, values: str = "fp32", top_k=K_CACHE, draws: int = 0) -> dict:
        """Cache rows `[B, S, ...]` through the cache's encoding (what a reader decodes)."""

        sampler = torch.Generator().manual_seed(7) if draws else None
        rows = teacher_rows(self.zt_local, self.labels, V, draws or top_k, self.group, sample_generator=sampler)
        enc = Encoding.for_vocab(V, values, draws=draws)
        return enc.decode(enc.encode(rows))

    def online(self, kd: dict) -> dict:

        return _through_loss_func(kd, self.zs_local, self.labels, self.mask, OnlineLogits(self.zt_local),
                                  self.group)

    def cached(self, kd: dict, rows: dict, sampled: bool = False) -> dict:
        """A cache's rows as the training step passes them (make_loss_func rebuilds teacher logits
        where the sparse objective does not apply)."""
        return _through_loss_func(kd, self.zs_local, self.labels, self.mask, CachedRows(rows, sampled), self.group)

    def unigram(self, kd: dict) -> dict:
        """The unigram teacher (with kd.top_k: its one top-k row, broadcast, the sparse objective)."""
        return _through_loss_func(kd, self.zs_local, self.labels, self.mask, UnigramTeacher(_unigram_logp()),
                                  self.group)

    def kd_loss(self, opts: dict) -> dict:
        """kd_loss alone (the separate passes' KD term): per-token loss, gradient of their sum."""

        x = self.zs_local.clone().requires_grad_(True)
        tok = kd_loss(x, self.zt_local, KDOptions(vocab_size=V, **opts), loss_mask=self.mask, tp_group=self.group,
                      chunk_size=5)
        tok.sum().backward()
        return {"kd_tok": tok.reshape(-1), "kd": tok.sum(), "total": tok.sum(), "grad": x.grad}

    def teacher_label_logp(self) -> torch.Tensor:
        """log p_T(y) [S*B] in megatron-core's CE convention (softmax over every column)."""
        return F.log_softmax(self.zt.double().reshape(-1, VPAD), -1).gather(-1, self.labels.reshape(-1, 1))[:, 0]

    def fused(self, opts: dict, ce_w: float, kd_w: float, auto: AutoAlpha | None = None) -> dict:
        """fused_output_kd with the logits as hidden states and identity output layers: the hidden
        states' gradient is the logits' (summed over the ranks' shards, as megatron-core's
        copy-to-tensor-parallel region does)."""


        eye = torch.eye(VPAD)[self.cols]
        tokens = lambda z: z.reshape(-1, VPAD)  # noqa: E731  sequence-major tokens, as the labels
        h = tokens(self.zs).clone().requires_grad_(True)
        total, sums = fused_output_kd(h, eye, tokens(self.zt), eye, self.labels.reshape(-1), self.mask.reshape(-1),
                                      KDOptions(vocab_size=V, **opts), ce_weight=ce_w, kd_weight=kd_w,
                                      tp_group=self.group, chunk_size=4, gemm_chunk_size=5, auto=auto)
        total.backward()
        grad = h.grad.clone()
        if self.group is not None:
            dist.all_reduce(grad, group=self.group)
        out = {"total": total, "ce": sums["ce"], "kd": sums["kd"], "grad": grad.reshape(S, B, VPAD)[..., self.cols]}
        return out | ({"alpha": sums["alpha"], "advantage": sums["advantage"]} if auto is not None else {})


def routes(case: Case) -> dict:
    """name -> (what the route computed on this rank, its float64 reference): the routes that run
    without megatron-core."""
    zs, lab, mask = case.zs, case.labels, case.mask
    c1, c2 = case.teacher_logits(), case.teacher_logits(2.0)
    dense = (torch.ones(S * B, V, dtype=torch.bool), torch.softmax(c1, -1), torch.zeros(S * B, dtype=torch.float64))
    ref = lambda kind, teacher, **kw: lambda: reference(zs, lab, mask, kind, teacher, **kw)  # noqa: E731
    top5o = truncated_target(c1, top_k=5, other_bucket=True)
    rows_f32, rows_bf16 = case.rows("fp32"), case.rows("bf16")
    sampled = case.rows(draws=DRAWS)
    full = case.rows(top_k=None)
    uni = _unigram_logp().double().expand(S * B, V)
    return {
        "online/fkl_t1": (lambda: case.online({}), ref("forward_kl", dense)),
        "online/fkl_t2": (lambda: case.online({"temperature": 2.0}),
                          ref("forward_kl", (dense[0], torch.softmax(c2, -1), dense[2]), T=2.0)),
        "online/fkl_t05_no_t2": (lambda: case.online({"temperature": 0.5, "t2_scale": False, "alpha": 0.3}),
                                 ref("forward_kl", truncated_target(case.teacher_logits(0.5)), T=0.5,
                                     t2_scale=False, ce_w=0.7, kd_w=0.3)),
        "online/keep_ce_topk_other": (lambda: case.online({"top_k": 5, "other_bucket": True, "mix": "keep_ce"}),
                                      ref("forward_kl", top5o, ce_w=1.0)),
        "online/topk": (lambda: case.online({"top_k": 5}), ref("forward_kl", truncated_target(c1, top_k=5))),
        "online/topp_other": (lambda: case.online({"top_p": 0.8, "other_bucket": True}),
                              ref("forward_kl", truncated_target(c1, top_p=0.8, other_bucket=True))),
        "online/reverse_t15": (lambda: case.online({"kind": "reverse_kl", "temperature": 1.5}),
                               ref("reverse_kl", case.teacher_logits(1.5), T=1.5)),
        "online/jsd": (lambda: case.online({"kind": "jsd", "jsd_beta": 0.3}), ref("jsd", c1, jsd_beta=0.3)),
        "online/hard_t2": (lambda: case.online({"kind": "hard", "temperature": 2.0}), ref("hard", c2, T=2.0)),
        "kd_loss/fkl_t2": (lambda: case.kd_loss({"temperature": 2.0}),
                           ref("forward_kl", truncated_target(c2), T=2.0, ce_w=0.0, kd_w=1.0)),
        "kd_loss/topp": (lambda: case.kd_loss({"top_p": 0.8}),
                         ref("forward_kl", truncated_target(c1, top_p=0.8), ce_w=0.0, kd_w=1.0)),
        "kd_loss/hard": (lambda: case.kd_loss({"kind": "hard"}), ref("hard", c1, ce_w=0.0, kd_w=1.0)),
        "fused/fkl_t1": (lambda: case.fused({}, 0.4, 0.6), ref("forward_kl", dense, ce_w=0.4, kd_w=0.6)),
        "fused/topk_other": (lambda: case.fused({"top_k": 5, "other_bucket": True}, 0.5, 0.5),
                             ref("forward_kl", top5o)),
        "cache_topk_fp32/other_k5": (lambda: case.cached({"top_k": 5, "other_bucket": True}, rows_f32),
                                     ref("forward_kl", rows_target(rows_f32, 5, True))),
        "cache_topk_bf16/other": (lambda: case.cached({"top_k": K_CACHE, "other_bucket": True}, rows_bf16),
                                  ref("forward_kl", rows_target(rows_bf16, K_CACHE, True))),
        "cache_topk_fp32/renormalised": (lambda: case.cached({"top_k": K_CACHE}, rows_f32),
                                         ref("forward_kl", rows_target(rows_f32, K_CACHE, False))),
        "cache_topk_fp32/hard_t2": (lambda: case.cached({"kind": "hard", "temperature": 2.0}, rows_f32),
                                    ref("hard", c2, T=2.0)),
        "cache_sampled": (lambda: case.cached({"alpha": 0.7}, sampled, sampled=True),
                          ref("forward_kl", rows_target(sampled, DRAWS, False), ce_w=0.3, kd_w=0.7)),
        "cache_full/reverse": (lambda: case.cached({"kind": "reverse_kl"}, full), ref("reverse_kl", c1)),
        "cache_full/fkl_t2": (lambda: case.cached({"temperature": 2.0}, full),
                              ref("forward_kl", truncated_target(c2), T=2.0)),
        "unigram/top_k_row": (lambda: case.unigram({"top_k": 6, "other_bucket": True}),
                              ref("forward_kl", truncated_target(uni, 6, other_bucket=True))),
        "unigram/dense": (lambda: case.unigram({}), ref("forward_kl", truncated_target(uni))),
    } | auto_routes(case, dense, top5o, rows_f32, full)


def auto_routes(case: Case, dense, top5o, rows, full) -> dict:
    """kd.auto on each kernel (its first micro-batch: α = the ceiling), with the teacher's
    advantage it reads: the one-pass T = 1 kernel, the general one (T = 2, no teacher metrics:
    the teacher's CE computed for it; reverse KL from a full cache), the fused output layer and
    the top-K cache's sparse kernel (the label's log-probability from the rows)."""
    zs, lab, mask = case.zs, case.labels, case.mask
    online_label = case.teacher_label_logp()
    row_label = rows["label_logp"].transpose(0, 1).reshape(-1)
    # rebuilt teacher logits (a full cache's) are log-probabilities over the real columns only
    rebuilt_label = F.log_softmax(case.teacher_logits(), -1).gather(-1, lab.reshape(-1, 1))[:, 0]
    ref = lambda kind, teacher, auto, **kw: lambda: reference(zs, lab, mask, kind, teacher, auto=auto, **kw)  # noqa: E731
    t2 = (dense[0], torch.softmax(case.teacher_logits(2.0), -1), dense[2])
    return {
        "auto/online_t1": (lambda: case.online({"alpha": 1.0, "auto": {}}),
                           ref("forward_kl", dense, (1.0, False, online_label))),
        "auto/online_t2_keep_ce": (
            lambda: case.online({"alpha": 0.8, "auto": {"tau": 0.5}, "temperature": 2.0, "mix": "keep_ce",
                                 "teacher_metrics": False}),
            ref("forward_kl", t2, (0.8, True, online_label), T=2.0)),
        "auto/fused": (lambda: case.fused({}, 0.0, 1.0, AutoAlpha(1.0, 0.3)),
                       ref("forward_kl", dense, (0.3, False, online_label))),
        "auto/cache_topk_other": (lambda: case.cached({"alpha": 1.0, "auto": {}, "top_k": 5, "other_bucket": True},
                                                      rows),
                                  ref("forward_kl", rows_target(rows, 5, True), (1.0, False, row_label))),
        "auto/cache_full_reverse": (lambda: case.cached({"alpha": 0.6, "auto": {}, "kind": "reverse_kl"}, full),
                                    ref("reverse_kl", case.teacher_logits(), (0.6, False, rebuilt_label))),
    }


# --- comparing --------------------------------------------------------------------------------

def _rel(got, want) -> float:
    got, want = torch.as_tensor(got).detach().double(), torch.as_tensor(want).double()
    return float((got - want).abs().max() / want.abs().max().clamp(min=1.0))


def errors(got: dict, want: dict, cols: slice) -> dict:
    """Relative errors (to the reference's largest magnitude, at least 1) of every quantity the
    route reports; the gradient on this rank's columns only."""
    out = {key: _rel(got[key], want[key]) for key in ("total", "ce", "kd", "kd_tok", "alpha", "advantage")
           if key in got}
    out["grad"] = _rel(got["grad"].reshape(S, B, -1), want["grad"][..., cols])
    out["finite"] = bool(torch.isfinite(torch.as_tensor(got["total"])).all() and torch.isfinite(got["grad"]).all())
    return out


def compare(group=None, rank: int = 0, tp: int = 1, extra=None) -> dict:
    """`input/route/tp` -> errors, for every input case and route (and `extra(case)`'s routes)."""
    out = {}
    for name in INPUTS:
        case = Case(name, group, rank, tp)
        table = routes(case) | (extra(case) if extra else {})
        for route, (run, ref) in table.items():
            out[f"{name}/{route}/tp{tp}"] = errors(run(), ref(), case.cols)
    return out


# fp32 arithmetic against float64: 6e-7 measured at worst. A bf16-stored target sums to 1 only
# within its rounding (2^-8 relative per value): the reference divides by its sum, the routes not.
TOLERANCE = {"cache_topk_bf16": 2.0 ** -8}


def check(results: dict) -> None:
    for key, errs in results.items():
        tol = next((t for prefix, t in TOLERANCE.items() if f"/{prefix}" in key), 2e-6)
        assert errs.pop("finite"), key
        assert max(errs.values()) <= tol, (key, errs)


def test_every_route_matches_the_float64_reference_at_tp1():
    results = compare()
    assert len(results) == len(INPUTS) * 28
    check(results)


# --- the routes that need megatron-core, and TP=2: one gloo spawn -------------------------------

def _megatron_routes(case: Case) -> dict:
    """The separate passes (megatron-core's CE) and the fused objective through make_loss_func (its
    tensor-parallel regions)."""

    zs, lab, mask = case.zs, case.labels, case.mask
    c1 = case.teacher_logits()
    ref = lambda kind, teacher, **kw: lambda: reference(zs, lab, mask, kind, teacher, **kw)  # noqa: E731
    rows = case.rows("fp32")

    def fused_loss_func():
        eye = torch.eye(VPAD)[case.cols]
        signal = FusedOutput(eye, case.zt, eye, sequence_parallel=False)
        got = _through_loss_func({"fused_output_layer": True, "chunk_size": 4}, case.zs, lab.t().contiguous(),
                                 mask.t().contiguous(), signal, case.group)
        return got | {"grad": got["grad"][..., case.cols]}

    return {
        "separate/alpha0": (lambda: case.online({"alpha": 0.0}), ref("forward_kl", truncated_target(c1),
                                                                      ce_w=1.0, kd_w=0.0)),
        "separate/magnitude_matched": (lambda: case.online({"mix": "magnitude_matched", "top_k": 5}),
                                       ref("forward_kl", truncated_target(c1, top_k=5), magnitude_matched=True)),
        "cache_topk_fp32/magnitude_matched": (
            lambda: case.cached({"mix": "magnitude_matched", "top_k": 5, "other_bucket": True}, rows),
            ref("forward_kl", rows_target(rows, 5, True), magnitude_matched=True)),
        "fused/loss_func": (fused_loss_func, ref("forward_kl", truncated_target(c1))),
    }


def _unigram_logp() -> torch.Tensor:
    """An add-one unigram distribution's log-probabilities over the real vocabulary (with ties)."""
    counts = torch.arange(V, dtype=torch.float64) % 11 * 7 + 1
    return (counts / counts.sum()).log().float()


def run_on_ranks(workdir: str) -> dict:
    """On each of 2 gloo ranks: every route at TP=1 (a group of one) and TP=2."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    singles = [dist.new_group([0]), dist.new_group([1])]
    pair = dist.new_group([0, 1])
    out = compare(singles[rank], 0, 1, _megatron_routes) | compare(pair, rank, 2, _megatron_routes)
    dist.destroy_process_group()
    return out


@pytest.mark.slow
@pytest.mark.multiproc
def test_every_route_matches_the_float64_reference_at_tp1_and_tp2(tmp_path):
    per_rank = run_distributed("tests.distill.test_routes:run_on_ranks", 2, tmp_path)
    for results in per_rank:  # each rank checks its own shard
        assert len(results) == 2 * len(INPUTS) * 32
        check(results)
