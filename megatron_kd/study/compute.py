"""Is distillation worth its compute? Each KD point's total compute under three stated
accountings, the student architecture's supervised frontier (its loss against its own training
FLOPs, from every run that trains it without KD), and the point's compute-matched gain: the
frontier's loss at the point's total compute minus the point's loss.

Accountings (FLOPs of one KD point, per run):
  (a) shared:  the teacher exists; its forward pass is split among the runs that read one cache
  (b) alone:   the teacher exists; its pass serves this student alone
  (c) trained: the teacher is trained for this student: its pretraining + (b)
Student training FLOPs are the run's own; the teacher's pass is forward-only (1/3 of training).
All in the one compute currency of models/flops.py (6·N·D and 2·N·D, N its FLOP parameters:
matmul weights, output layer and attention), the one `mkd fit` and `mkd advise` count in.

The frontier's nodes: the student's baselines (one node per training length, the mean of its
seeds) and teacher-zoo runs of the same architecture (the teacher's own loss at its pretraining
FLOPs, one run each). A frontier cannot rise with compute (a larger budget can run a smaller
recipe): each node's frontier value is the best node mean at its compute or less (a longer run
that got worse, e.g. out of distribution, does not lift it), and the values are joined linearly
in log-log. Outside its range nothing is extrapolated: above its largest compute the
frontier is at most its last node, so a point's gain there is an upper bound (it can show "not
worth it", never "worth it"); below its smallest, a lower bound.

Noise: each run's loss is taken to vary by the seed spread pooled over every point of the
student with two or more seeds (per set: initialisation and data effects included, as the
frontier's runs are not paired with the point's); intervals are t at those degrees of freedom.
Pure functions of the report's rows: tested on synthetic rows with known answers.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.special import stdtrit

from megatron_kd.models.flops import forward_flops, training_flops
from megatron_kd.models.params import human
from megatron_kd.study.rows import RunRow
from megatron_kd.study.stats import is_auto

ACCOUNTINGS = {"a": "teacher exists, its pass shared by the runs of one cache",
               "b": "teacher exists, its pass serves this student alone",
               "c": "teacher trained for this student (pretraining + pass)"}
GAIN_ACCOUNTINGS = ("b", "c")


def run_flops(r: RunRow) -> dict:
    """A run's FLOPs by part, in the one currency (models/flops.py): from its columns, else from
    its parameter counts by the currency's fallback (6·N·D training, 2·N·D forward, N the total
    parameters; said in "estimated")."""
    est = []

    def part(column, name, count, params, tokens):
        if getattr(r, column) is not None:
            return getattr(r, column)
        if getattr(r, params) and getattr(r, tokens):
            est.append(name)
            return count(float(getattr(r, params)), float(getattr(r, tokens)))
        return None

    student = part("student_flops", "student", training_flops, "student_params", "student_tokens")
    out = {"student": student, "estimated": est}
    if not r.teacher:
        return out
    alone = part("teacher_pass_flops", "teacher pass", forward_flops, "teacher_params", "student_tokens")
    pretrain = part("teacher_pretrain_flops", "teacher pretraining", training_flops, "teacher_params", "teacher_tokens")
    shared_by = max(1e-9, float(r.teacher_pass_shared_by or 1))  # (fractional with readers of several lengths)
    out.update(alone=alone, shared=alone / shared_by if alone is not None else None, pretrain=pretrain)
    return out


def totals(r: RunRow) -> dict:
    """{accounting: total FLOPs} of one run (None where a part is unknown)."""
    f = run_flops(r)
    s = f["student"]
    if not r.teacher:
        return {k: s for k in ACCOUNTINGS}
    add = lambda *xs: None if s is None or any(x is None for x in xs) else s + sum(xs)  # noqa: E731
    return {"a": add(f["shared"]), "b": add(f["alone"]), "c": add(f["alone"], f["pretrain"])}


def same_architecture(r: RunRow, student: str) -> bool:
    """Is this run's teacher the student's own model? By its model recipe's name, else (a table
    without teacher_model) by an equal parameter count."""
    if r.teacher_model:
        return Path(str(r.teacher_model)).stem == student
    return bool(r.teacher_params) and r.teacher_params == r.student_params


def run_noise(rows: list[RunRow], s: str) -> tuple[float | None, int]:
    """(per-run sd, degrees of freedom): the seed spread pooled over points with >= 2 runs."""
    groups: dict = {}
    for r in rows:
        v = r.val.get(s)
        if v is not None and math.isfinite(v):
            groups.setdefault(r.point_key, []).append(v)
    ss = sum(float(np.sum((np.asarray(g) - np.mean(g)) ** 2)) for g in groups.values() if len(g) > 1)
    df = sum(len(g) - 1 for g in groups.values() if len(g) > 1)
    return (math.sqrt(ss / df) if df else None), df


class Frontier:
    """The supervised frontier of one student on one set: nodes (compute, mean loss, runs, label),
    each with its frontier value (the best node at or below its compute)."""

    def __init__(self, nodes: list[tuple[float, float, int, str]]):
        nodes = sorted((n for n in nodes if n[0] and n[0] > 0 and math.isfinite(n[1])), key=lambda n: n[0])
        self.nodes = nodes
        # the best loss measured at this compute or less: each node's frontier value is that of
        # the best node at or below it (`block`: which one; nodes sharing it move together)
        self.block, self.value, self.weight = [], [], []
        for i, (_, y, n, _) in enumerate(nodes):
            b = i if not self.block or y < self.value[-1] else self.block[-1]
            self.block.append(b)
            self.value.append(nodes[b][1])
            self.weight.append(nodes[b][2])

    def at(self, compute: float, sd: float | None) -> dict | None:
        """The frontier's loss at `compute`: {value, var, kind}; kind "interpolated", or "at most"
        (above its range: its last node) or "at least" (below: its first). var from the nodes'
        run counts and the per-run sd (None without one)."""
        if not self.nodes or compute is None or compute <= 0:
            return None
        v2 = sd * sd if sd is not None else None
        var = lambda i: v2 / self.weight[i] if v2 is not None else None  # noqa: E731
        xs = [math.log(n[0]) for n in self.nodes]
        x = math.log(compute)
        if x >= xs[-1]:
            kind = "at most" if x > xs[-1] else "interpolated"
            return {"value": self.value[-1], "var": var(len(xs) - 1), "kind": kind}
        if x < xs[0]:
            return {"value": self.value[0], "var": var(0), "kind": "at least"}
        j = max(1, int(np.searchsorted(xs, x, side="left")))
        if x == xs[j - 1]:
            return {"value": self.value[j - 1], "var": var(j - 1), "kind": "interpolated"}
        i = j - 1
        w = (x - xs[i]) / (xs[j] - xs[i])
        li, lj = self.value[i], self.value[j]
        f = math.exp((1 - w) * math.log(li) + w * math.log(lj))
        if v2 is None:
            v = None
        elif self.block[i] == self.block[j]:  # one pooled mean: the two ends move together
            v = v2 / self.weight[i]
        else:  # delta method on the log-log interpolation
            v = f * f * ((1 - w) ** 2 * var(i) / li ** 2 + w ** 2 * var(j) / lj ** 2)
        return {"value": f, "var": v, "kind": "interpolated"}


def matched_gain(front: Frontier, compute: float, loss: float, n_runs: int, sd: float | None, df: int,
                 level: float) -> dict:
    """Frontier loss at `compute` minus the point's mean loss, with its interval and verdict."""
    f = front.at(compute, sd)
    if f is None or loss is None or not math.isfinite(loss):
        return {"gain": None, "interval": None, "kind": None, "verdict": "no frontier"}
    g = f["value"] - loss
    ci = None
    if sd is not None and df >= 1 and f["var"] is not None:
        h = float(stdtrit(df, 0.5 + level / 2)) * math.sqrt(f["var"] + sd * sd / max(1, n_runs))
        ci = (g - h, g + h)
    kind = f["kind"]
    if ci is None:
        verdict = "no noise estimate"
    elif kind == "interpolated":
        verdict = "worth it" if ci[0] > 0 else "not worth it" if ci[1] < 0 else "within noise"
    elif kind == "at most":  # the gain is at most g
        verdict = "not worth it" if ci[1] < 0 else "beyond the frontier"
    else:  # at least g
        verdict = "worth it" if ci[0] > 0 else "below the frontier"
    return {"gain": g, "interval": ci, "kind": kind, "verdict": verdict}


def with_baseline_lengths(rows: list[RunRow]) -> list[RunRow]:
    """The rows, a baseline trained for another length than its student's KD runs (`baseline_steps`,
    or a table's row) marked as its own point (a copy with `baseline_tokens`): a frontier node, not
    the paired baseline. The rows given are not changed."""
    other: dict = {}  # id of a row -> its length
    for student in {r.student for r in rows}:
        rs = [r for r in rows if r.student == student]
        kd = [r.student_tokens for r in rs if r.teacher]
        base = [r.student_tokens for r in rs if not r.teacher]
        if kd:
            main = max(set(kd), key=lambda t: (kd.count(t), t or 0))
        else:
            main = max((t for t in base if t is not None), default=None)
        for r in rs:
            if not r.teacher and main is not None and r.student_tokens not in (None, main):
                other[id(r)] = r.student_tokens
    return [replace(r, baseline_tokens=other[id(r)]) if id(r) in other else r for r in rows]


def frontier_nodes(rows: list[RunRow], student: str, s: str) -> list[tuple[float, float, int, str]]:
    """The student's supervised runs on set `s`: (compute, mean loss, runs, label) per node."""
    nodes, groups, zoo = [], {}, {}
    for r in rows:
        if r.student != student:
            continue
        if not r.teacher and r.val.get(s) is not None:
            groups.setdefault(r.student_tokens, []).append(r)
        elif r.teacher and same_architecture(r, student) and r.teacher_val.get(s) is not None:
            zoo.setdefault(r.teacher, r)
    for tokens, rs in groups.items():
        flops = [run_flops(r)["student"] for r in rs]
        if all(f is not None for f in flops):
            nodes.append((float(np.mean(flops)), float(np.mean([r.val[s] for r in rs])), len(rs),
                          f"baseline, {human(tokens or 0)} tokens"))
    for name, r in zoo.items():
        pre = run_flops(r)["pretrain"]
        if pre:
            nodes.append((pre, r.teacher_val[s], 1, f"teacher {name} (same model)"))
    return nodes


def compute_study(rows: list[RunRow], study: dict, sets: list[str], level: float) -> dict:
    """Per student: the frontier per set, every KD point's totals and compute-matched gains, and
    per set and accounting the answer at each teacher's best α (by seed means)."""
    out = {}
    for student, st in study["students"].items():
        rs = [r for r in rows if r.student == student]
        per_set = {}
        for s in sets:
            sd, df = run_noise(rs, s)
            front = Frontier(frontier_nodes(rs, student, s))
            per_set[s] = {"front": front, "sd": sd, "df": df,
                          "nodes": [{"compute": c, "loss": y, "runs": n, "label": lab, "frontier": v}
                                    for (c, y, n, lab), v in zip(front.nodes, front.value)]}
        runs_of: dict = {}  # point key -> its runs, grouped once (a search per point is quadratic)
        for r in rs:
            runs_of.setdefault(r.point_key, []).append(r)
        points = []
        for p in st["points"]:
            if not p["teacher"]:
                continue
            prs = runs_of.get(p["key"], [])
            tot = [totals(r) for r in prs]
            t = {k: (float(np.mean([x[k] for x in tot])) if all(x[k] is not None for x in tot) else None)
                 for k in ACCOUNTINGS}
            gains = {k: {s: matched_gain(per_set[s]["front"], t[k], p["mean"][s], p["seeds"],
                                         per_set[s]["sd"], per_set[s]["df"], level) for s in sets}
                     for k in GAIN_ACCOUNTINGS}
            points.append({"key": p["key"], "teacher": p["teacher"], "alpha": p["alpha"],
                           "alpha_schedule": p["alpha_schedule"], "auto_ceiling": p.get("auto_ceiling"),
                           "seeds": p["seeds"], "loss": p["mean"],
                           "compute": t, "matched_gain": gains,
                           "estimated": sorted({e for r in prs for e in run_flops(r)["estimated"]})})
        answers = {}
        for s in sets:
            answers[s] = {}
            for k in GAIN_ACCOUNTINGS:
                best = {}
                for q in points:
                    if is_auto(q):  # the answer is the grid's best α; kd.auto has its own test
                        continue
                    cur = best.get(q["teacher"])
                    if math.isfinite(q["loss"][s]) and (cur is None or q["loss"][s] < cur["loss"][s]):
                        best[q["teacher"]] = q
                answers[s][k] = [{"teacher": t, "alpha": q["alpha"], "alpha_schedule": q["alpha_schedule"],
                                  "compute": q["compute"][k], **q["matched_gain"][k][s]}
                                 for t, q in sorted(best.items())]
        out[student] = {"sets": per_set, "points": points, "answers": answers}
    return out
